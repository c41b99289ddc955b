"""Regenerate the README's measured tables from the tools, so they cannot drift by hand edits.

    python tools/readme_tables.py           # rewrite every table between its markers in README.md
    python tools/readme_tables.py --check   # exit 1 (and say which) if a table differs from a fresh measurement

A table lives between ``<!-- table:<name> -->`` and ``<!-- /table:<name> -->``. Only exact, machine-independent
figures are generated here (parameters and MACs, counted on the meta device); timings depend on the machine and are
recorded with the command and machine they came from instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mixerzoo import benchmark

README = Path(__file__).resolve().parents[1] / "README.md"


def mixer_macs() -> str:
    """The mixer grid's parameters and MACs (``benchmark.py --preset mixers --macs-only``), one row per mixer."""
    models, sizes = benchmark.preset("mixers")
    specs = [spec for model in models for spec in benchmark.parse_model_arg(model)]
    cfg = benchmark.BenchmarkConfig(models=specs, img_sizes=sizes, macs_only=True)
    rows = benchmark.run_benchmark(cfg, log=lambda message: None)
    by_model: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["img_size"]] = row
    header = ["mixer", "params (M)", *(f"GMACs {s}" for s in sizes), "of which FFT", "of which scan"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    notes = []
    for label, at in by_model.items():
        name = label.split("mixer=", 1)[1] if "mixer=" in label else f"{label} (reference, timm)"
        first = at[sizes[0]]
        cells = [name, benchmark.format_value("params_m", first.get("params_m"))]
        cells += [benchmark.format_value("gmacs", at[s].get("gmacs")) for s in sizes]
        for column in ("gmacs_fft", "gmacs_scan"):
            cells.append("/".join(benchmark.format_value("gmacs", at[s].get(column)) for s in sizes))
        lines.append("| " + " | ".join(cells) + " |")
        notes += [f"{name} at {s}: {at[s]['note']}" for s in sizes if at[s].get("note", "").startswith("n/a")]
    sizes_text = "/".join(str(s) for s in sizes)
    lines += ["", f"FFT and scan columns: GMACs at {sizes_text}. " + "; ".join(notes)]
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {"mixer-macs": mixer_macs}


def replace_table(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no markers <!-- table:{name} --> ... <!-- /table:{name} -->.")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    text = README.read_text()
    stale = []
    for name, make in TABLES.items():
        updated = replace_table(text, name, make())
        if updated != text:
            stale.append(name)
            text = updated
    if args.check and stale:
        print(f"README.md tables out of date: {', '.join(stale)}; run python tools/readme_tables.py", file=sys.stderr)
        return 1
    if not args.check:
        README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
