"""Regenerate the documentation's measured tables from the tools, so they cannot drift by hand edits.

    python tools/readme_tables.py           # rewrite every table between its markers in the docs/ pages
    python tools/readme_tables.py --check   # exit 1 (and say which) if a table differs from a fresh measurement

    python tools/readme_tables.py --measure mixer-timings   # re-run a timing benchmark (minutes), then rewrite

A table lives between ``<!-- table:<name> -->`` and ``<!-- /table:<name> -->`` on exactly one Markdown page under
``docs/`` (the benchmarks page holds them all today; a table may move to any page). Two kinds:

- exact, machine-independent figures (parameters and MACs, counted on the meta device), recomputed on every run;
- timings, which depend on the machine: ``--measure <name>`` runs ``benchmark.py`` with the table's arguments and
  stores its CSV and a description of the run (command, date, CPU, load average before and after) under
  ``docs/benchmarks/``; the page's table is rendered from those files, so ``--check`` compares without re-timing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from mixerzoo.tools import benchmarking as benchmark

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MEASURED = DOCS / "benchmarks"


def preset_macs(preset: str) -> str:
    """A mixer grid's parameters and MACs (``benchmark.py --preset <preset> --macs-only``), one row per mixer."""
    models, sizes = benchmark.preset(preset)
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
        name = _label(label) if "@" in label else f"{_label(label)}, reference"
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


# --- timing tables, rendered from a stored benchmark run -------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """A timing table: the ``benchmark.py`` arguments that measure it and how its rows are shown."""

    args: tuple[str, ...]
    render: Callable[[list[dict[str, str]]], list[str]]  # CSV rows -> Markdown table lines


def _number(row: dict[str, str], column: str) -> float | None:
    return float(row[column]) if row.get(column) else None


def _cell(row: dict[str, str], column: str) -> str:
    if column == "note":
        return row.get("note", "")
    value = _number(row, column)
    if column in ("infer_img_s", "train_img_s") and value is not None:
        return f"{value:.3g}"  # 0.0412 img/s at 896 px is not 0.0
    return benchmark.format_value(column, value)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def ms_per_gmac(row: dict[str, str]) -> float | None:
    """Inference milliseconds per GMAC at the table's batch: ``1000 / (img/s x GMACs per image)``."""
    rate, gmacs = _number(row, "infer_img_s"), _number(row, "gmacs")
    return 1000 / (rate * gmacs) if rate and gmacs else None


def _label(model: str) -> str:
    """``config:metaformer_s12@mixer=aff`` -> ``aff`` (the value a grid varies), ``config:caformer_s18`` ->
    ``caformer_s18 (zoo)``, a timm name -> ``<name> (timm)``."""
    if "@" in model:
        return model.rsplit("=", 1)[1]
    return f"{model.removeprefix('config:')} (zoo)" if model.startswith("config:") else f"{model} (timm)"


TIMED = ["infer_img_s", "infer_rel", "latency_ms", "latency_rel", "train_img_s", "train_rel"]
TIMED_HEADER = ["img/s", "÷ ref", "latency ms (b=1)", "÷ ref", "train img/s", "÷ ref"]


def render_grid(rows: list[dict[str, str]]) -> list[str]:
    """One row per model and size: MACs, the timings and their ratios to the reference, ms/GMAC, peak memory."""
    header = ["model", "px", "batch", "GMACs", *TIMED_HEADER, "ms/GMAC", "peak MB", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        cells = [_label(row["model"]), row["img_size"], row["batch"], _cell(row, "gmacs")]
        cells += [_cell(row, c) for c in TIMED]
        per_gmac = ms_per_gmac(row)
        cells += [f"{per_gmac:.0f}" if per_gmac else "n/a", _cell(row, "peak_mem_mb"), _cell(row, "note")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# Each zoo model against timm models of its kind (same kind of mixer or same size).
PEERS = {
    "vim2_t": "convnext_tiny",
    "stripmlp_t": "convnext_tiny",
    "hydra_vit_s": "vit_small_patch16_224",
    "affnet": "mobilevit_s",
}

PEER_OPTIONS = ("--reference", "convnext_tiny", "--threads", "1")


def render_peers(rows: list[dict[str, str]]) -> list[str]:
    """Per model: cost, then ms/GMAC at batch 1 (latency) and at batch 8 (throughput), each also divided by its timm
    peer's; training images/s and peak memory."""
    by_model = {row["model"]: row for row in rows}
    header = ["model", "params (M)", "GMACs", "peer", "latency ms (b=1)", "ms/GMAC (b=1)", "÷ peer"]
    header += ["img/s (b=8)", "ms/GMAC (b=8)", "÷ peer", "train img/s (b=8)", "peak MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]

    def latency_per_gmac(row: dict[str, str]) -> float | None:
        latency, gmacs = _number(row, "latency_ms"), _number(row, "gmacs")
        return latency / gmacs if latency and gmacs else None

    for row in rows:
        peer = by_model.get(PEERS.get(row["model"], ""))
        cells = [row["model"], _cell(row, "params_m"), _cell(row, "gmacs"), PEERS.get(row["model"], "")]
        cells.append(_cell(row, "latency_ms"))
        for per_gmac, rate_column in ((latency_per_gmac, None), (ms_per_gmac, "infer_img_s")):
            if rate_column:
                cells.append(_cell(row, rate_column))
            own, theirs = per_gmac(row), per_gmac(peer) if peer else None
            cells += [f"{own:.0f}" if own else "n/a", _ratio(own / theirs) if own and theirs else ""]
        cells += [_cell(row, "train_img_s"), _cell(row, "peak_mem_mb")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


TIMINGS: dict[str, Timing] = {
    "mixer-timings": Timing(("--preset", "mixers", "--threads", "1"), render_grid),
    "channel-mixer-timings": Timing(("--preset", "channel-mixers", "--threads", "1"), render_grid),
    "zoo-vs-timm-timings": Timing(("--preset", "zoo-vs-timm", "--threads", "1", "--runs", "5"), render_grid),
    "peer-timings": Timing(
        ("convnext_tiny", "mambaout_tiny", "vit_small_patch16_224", "mobilevit_s", *PEERS, *PEER_OPTIONS),
        render_peers,
    ),
}


def _load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(name: str, conditions: str = "") -> None:
    """Run the table's benchmark (in this process's CPU affinity) and store its CSV and run description."""
    MEASURED.mkdir(parents=True, exist_ok=True)
    args = [*TIMINGS[name].args, "--csv", str(MEASURED / f"{name}.csv")]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), _load_average()
    start = time.perf_counter()
    rows = benchmark.main(args)
    run = {
        "command": "python benchmark.py " + shlex.join(TIMINGS[name].args),
        "started": started,
        "wall_min": round((time.perf_counter() - start) / 60, 1),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, this run on CPU(s) {cpus}",
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "failed_rows": len(benchmark.failed_rows(rows)),
        "conditions": conditions,
    }
    (MEASURED / f"{name}.json").write_text(json.dumps(run, indent=1) + "\n")


def timing_table(name: str, page: Path = MEASURED / "index.md") -> str:
    """The stored run of ``name`` as a Markdown table plus one line saying how, where and when it was measured,
    with a link to its data relative to ``page``."""
    csv_path, run_path = MEASURED / f"{name}.csv", MEASURED / f"{name}.json"
    if not csv_path.exists() or not run_path.exists():
        raise SystemExit(f"{csv_path} or {run_path} is missing; run python tools/readme_tables.py --measure {name}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    run = json.loads(run_path.read_text())
    how = (
        f"Measured {run['started']} ({run['wall_min']} min) with `{run['command']}` on {run['machine']}; "
        f"load average (1/5/15 min) {run['load_average_before']} before, {run['load_average_after']} after; "
        f"torch {run['torch']}, timm {run['timm']}. {run.get('conditions', '')}"
    ).rstrip()
    data = os.path.relpath(csv_path, page.parent)
    how += f" Data: [{csv_path.name}]({data})."
    return "\n".join([*TIMINGS[name].render(rows), "", how])


TABLES: dict[str, Callable[[Path], str]] = {
    "mixer-macs": lambda page: preset_macs("mixers"),
    "channel-mixer-macs": lambda page: preset_macs("channel-mixers"),
}
TABLES.update({name: (lambda page, name=name: timing_table(name, page)) for name in TIMINGS})


def _markers(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", re.S)


def table_page(name: str, docs: Path = DOCS) -> Path:
    """The one page under ``docs`` that holds the markers of table ``name``."""
    pages = [page for page in sorted(docs.rglob("*.md")) if _markers(name).search(page.read_text())]
    if len(pages) != 1:
        found = ", ".join(str(p.relative_to(docs)) for p in pages) or "none"
        raise SystemExit(
            f"table {name}: expected its markers <!-- table:{name} --> ... <!-- /table:{name} --> on exactly one "
            f"page under {docs}, found {found}."
        )
    return pages[0]


def replace_table(text: str, name: str, table: str) -> str:
    return _markers(name).sub(lambda m: m.group(1) + table + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--measure", nargs="+", choices=list(TIMINGS), default=[], help="re-time these tables first")
    parser.add_argument("--conditions", default="", help="with --measure: what else ran on the machine meanwhile")
    args = parser.parse_args(argv)
    for name in args.measure:
        measure(name, args.conditions)
    pages: dict[Path, str] = {}
    stale = []
    for name, make in TABLES.items():
        page = table_page(name)
        text = pages.setdefault(page, page.read_text())
        updated = replace_table(text, name, make(page))
        if updated != text:
            stale.append(f"{name} ({page.relative_to(ROOT)})")
            pages[page] = updated
    if args.check and stale:
        print(f"tables out of date: {', '.join(stale)}; run python tools/readme_tables.py", file=sys.stderr)
        return 1
    if not args.check:
        for page, text in pages.items():
            if text != page.read_text():
                page.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
