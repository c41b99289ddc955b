"""Figures from the tables: the tables (benchmark.py / collect_results.py CSVs) stay the source of truth.

    python tools/plots.py samples --out docs/pathfinder/samples.png            # Pathfinder-32/64/128 examples
    python tools/plots.py cost outputs/benchmark/mixers.csv --out docs/pathfinder/cost.png
    python tools/plots.py accuracy results.csv --out docs/pathfinder/accuracy.png   # collect_results.py --csv
    python tools/plots.py accuracy by_mixer.csv --out accuracy.png   # or collect_results.py --by-mixer --csv
    python tools/plots.py curves multirun/pathfinder/<run id> --out docs/pathfinder/curves.png

``cost``: GMACs and inference images/s against the token count (pixels / 16², the stage-1 grid of the 4x stem)
per model of a ``benchmark.py`` CSV (e.g. ``--preset mixers``: every mixer at 224 / 448 / 896). ``accuracy``: top-1
(mean and standard deviation over seeds) against GMACs and training images/s, one panel row per image size, from
``collect_results.py --csv`` (one row per job) or ``--by-mixer --csv`` (already averaged). ``curves``: validation
top-1 per epoch of every job of a run, one line per mixer (the mean over its seeds, the seeds' range shaded), with
the chance level of the run's class count. Titles name the dataset and image size the data record: nothing
assumes one task. Needs matplotlib (``pip install -e ".[plots]"``); nothing needs a display (Agg backend).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), or a clear error without matplotlib."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError('The plots need matplotlib: pip install -e ".[plots]" (or pip install matplotlib).') from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _mixer_of(model_label: str) -> str:
    """``config:metaformer_s12@mixer=aff`` -> ``aff``; any other label as it is."""
    return model_label.split("mixer=", 1)[1] if "mixer=" in model_label else model_label


def _style(i: int) -> dict[str, Any]:
    """Colour and marker of the i-th series: 11+ mixers need more than matplotlib's 10 default colours."""
    return dict(color=pyplot().cm.tab20(i % 20), marker="os^Dv<>PX*h"[i % 11])


def mixer_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One style per name (sorted), so a mixer looks the same in every panel of a figure."""
    return {name: _style(i) for i, name in enumerate(sorted(set(names)))}


def plain_log_axis(axis: Any) -> None:
    """Log scale with plain numbers on the major ticks and none on the minor ones (they collide)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save(fig: Any, out: str | Path, dpi: int = 80) -> Path:
    """Write ``fig`` as a PNG with a 128-colour palette (a third of the bytes of matplotlib's RGBA for heat maps,
    so the figures stay small enough to commit) and close it."""
    import io

    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(128).save(out, optimize=True)
    return out


def samples(
    out: str | Path, sizes: Sequence[int] = (32, 64, 128), per_label: int = 3, difficulty: str = "hard"
) -> Path:
    """A grid of generated Pathfinder images: one row per size, ``per_label`` label-1 then label-0 images."""
    from mixerzoo.training.pathfinder import generate

    plt = pyplot()
    cols = 2 * per_label
    fig, axes = plt.subplots(len(sizes), cols, figsize=(1.5 * cols, 1.6 * len(sizes)))
    axes = np.asarray(axes).reshape(len(sizes), cols)
    for row, size in enumerate(sizes):
        images, labels = generate(2 * per_label, size, difficulty, seed=0, split="val")
        order = [i for i in range(len(labels)) if labels[i] == 1] + [i for i in range(len(labels)) if labels[i] == 0]
        for col, i in enumerate(order):
            ax = axes[row, col]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{size} px, {'joined' if labels[i] else 'not joined'}", fontsize=7)
    fig.suptitle(f"Pathfinder ({difficulty}): are the two dots joined by one dashed curve?", fontsize=9)
    return save(fig, out)


def cost(csv_files: Sequence[str | Path], out: str | Path, note: str = "") -> Path:
    """GMACs and inference images/s against tokens (log-log), one line per model, from ``benchmark.py`` CSVs
    (for the same model and size, a later file's non-empty values replace an earlier file's)."""
    plt = pyplot()
    rows: dict[tuple[str, int], dict[str, str]] = {}
    for path in csv_files:
        for row in read_csv(path):
            key = (row["model"], int(row["img_size"]))
            rows[key] = {**rows.get(key, {}), **{k: v for k, v in row.items() if v not in ("", None)}}
    models = sorted({m for m, _ in rows}, key=_mixer_of)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, model in enumerate(models):
        sizes = sorted(s for m, s in rows if m == model)
        tokens = [(s // 4) ** 2 for s in sizes]
        rebuilt = any(rows[(model, s)].get("note", "").startswith("built for") for s in sizes)
        style = dict(**_style(i), label=_mixer_of(model) + " *" * rebuilt)
        for ax, column in ((left, "gmacs"), (right, "infer_img_s")):
            points = [(t, _float(rows[(model, s)].get(column))) for t, s in zip(tokens, sizes)]
            points = [(t, v) for t, v in points if v is not None and v > 0]
            if points:
                ax.plot(*zip(*points), **style)
    for ax, label in ((left, "GMACs per image"), (right, "inference images/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("stage-1 tokens (224 / 448 / 896 px: 56² / 112² / 224²)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    plain_log_axis(right.yaxis)
    left.legend(fontsize=7, ncol=2)
    left.set_title("GMACs (exact, meta-device count; * rebuilt per size)", fontsize=9)
    right.set_title("speed" + (f" ({note})" if note else ""), fontsize=9)
    return save(fig, out)


def dataset_title(data: str | None, size: int | None) -> str:
    """``pathfinder``, 32 -> ``Pathfinder-32``; ``digits``, 32 -> ``Digits-32``; the parts that are known."""
    name = (data or "").replace("_", " ")
    name = name[:1].upper() + name[1:]
    return "-".join(part for part in (name, str(size) if size else "") if part)


def _grouped(rows: Sequence[dict[str, str]], metric: str) -> dict[tuple[int, str], dict[str, Any]]:
    """(img_size, mixer) -> ``x`` columns (lists of values), ``top1`` (mean, std or None) and ``data``, from
    per-job rows (the mean and std over the jobs) or from ``--by-mixer`` rows (their ``_mean`` / ``_std``)."""
    values: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        key = (int(_float(row.get("img_size")) or 0), row.get("mixer") or row.get("model") or "?")
        group = groups.setdefault(key, {"data": row.get("data"), "std": None})
        for column in ("gmacs", "train_img_s", metric):
            number = _float(row.get(column, row.get(f"{column}_mean")))
            if number is not None:
                values[key][column].append(number)
        if f"{metric}_std" in row and _float(row[f"{metric}_std"]) is not None:
            group["std"] = _float(row[f"{metric}_std"])
    for key, group in groups.items():
        top1 = values[key][metric]
        group.update({column: values[key][column] for column in ("gmacs", "train_img_s")})
        group["top1"] = float(np.mean(top1)) if top1 else None
        if group["std"] is None and len(top1) > 1:
            group["std"] = float(np.std(top1, ddof=1))
    return groups


def accuracy(csv_file: str | Path, out: str | Path, metric: str = "final_top1") -> Path:
    """Top-1 (mean, std over seeds as error bars) against GMACs and training images/s, one row per image size,
    from ``collect_results.py --csv`` (one row per job) or ``--by-mixer --csv`` (one row per mixer and size)."""
    plt = pyplot()
    groups = _grouped(read_csv(csv_file), metric)
    sizes = sorted({s for s, _ in groups})
    styles = mixer_styles([mixer for _, mixer in groups])
    fig, axes = plt.subplots(len(sizes), 2, figsize=(10, 3.6 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        for col, column, label in ((0, "gmacs", "GMACs per image"), (1, "train_img_s", "training images/s")):
            ax = axes[row, col]
            for (s, mixer), group in sorted(groups.items()):
                if s != size or group["top1"] is None or not group[column]:
                    continue
                x = float(np.mean(group[column]))
                style = styles[mixer]
                ax.errorbar(x, group["top1"], yerr=group["std"], fmt=style["marker"], color=style["color"], capsize=3)
                ax.annotate(mixer, (x, group["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis)
            ax.set_xlabel(label)
            ax.set_ylabel(f"{metric} (%), mean ± std over seeds")
            data = next((g["data"] for (s, _), g in groups.items() if s == size and g["data"]), None)
            ax.set_title(dataset_title(data, size), fontsize=9)
            ax.grid(True, alpha=0.3)
    return save(fig, out)


def curves(run_dir: str | Path, out: str | Path, metric: str = "top1") -> Path:
    """Validation ``metric`` per epoch of every job below ``run_dir`` (its ``metrics.csv``), one line per mixer and
    image size: the mean over seeds, the seeds' range shaded."""
    from omegaconf import OmegaConf

    from mixerzoo.registry import spec_label

    plt = pyplot()
    series: dict[tuple[int, str], list[np.ndarray]] = defaultdict(list)
    datasets: dict[int, set[str]] = defaultdict(set)
    classes: dict[int, set[int]] = defaultdict(set)
    for metrics in sorted(Path(run_dir).rglob("metrics.csv")):
        config = metrics.parent / ".hydra" / "config.yaml"
        if not config.exists():
            continue
        cfg = OmegaConf.load(config)
        size = int(cfg.data.img_size)
        values = [_float(r.get(metric)) for r in read_csv(metrics)]
        series[(size, spec_label(cfg.model.get("mixer")))].append(np.array([v for v in values if v is not None]))
        if cfg.data.get("name"):
            datasets[size].add(str(cfg.data.name))
        count = _class_count(cfg, metrics.parent)
        if count:
            classes[size].add(count)
    sizes = sorted({s for s, _ in series})
    styles = mixer_styles([mixer for _, mixer in series])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for col, size in enumerate(sizes):
        ax = axes[0, col]
        for (s, mixer), runs in sorted(series.items()):
            if s != size:
                continue
            length = min(len(r) for r in runs)
            stacked = np.stack([r[:length] for r in runs])
            epochs = np.arange(1, length + 1)
            (line,) = ax.plot(epochs, stacked.mean(0), **styles[mixer], label=f"{mixer} ({len(runs)})")
            ax.fill_between(epochs, stacked.min(0), stacked.max(0), color=line.get_color(), alpha=0.15)
        if len(classes[size]) == 1 and metric == "top1":  # one class count: its chance level
            (count,) = classes[size]
            ax.axhline(100 / count, color="0.5", lw=0.8, ls=":", label=f"chance (1/{count})")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"validation {metric} (%)")
        title = dataset_title("/".join(sorted(datasets[size])), size)
        ax.set_title(f"{title}: mean over seeds (count), range shaded", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, alpha=0.3)
    return save(fig, out)


def _class_count(cfg: Any, run: Path) -> int | None:
    """The run's class count: ``data.num_classes``, else what ``summary.json`` recorded (``data=folder``, digits)."""
    if cfg.data.get("num_classes"):
        return int(cfg.data.num_classes)
    summary = run / "summary.json"
    if summary.exists():
        count = json.loads(summary.read_text()).get("num_classes")
        return int(count) if count else None
    return None


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("samples", help="Pathfinder examples at 32/64/128 px")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--difficulty", default="hard")
    p = commands.add_parser("cost", help="GMACs and img/s vs tokens from benchmark.py CSVs")
    p.add_argument("csv", nargs="+")
    p.add_argument("--note", default="", help="caption of the speed panel (machine, load)")
    p = commands.add_parser("accuracy", help="top-1 vs cost from collect_results.py --csv")
    p.add_argument("csv")
    p.add_argument("--metric", default="final_top1")
    p = commands.add_parser("curves", help="validation top-1 per epoch of a run's jobs")
    p.add_argument("run_dir")
    for p in commands.choices.values():
        p.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.command == "samples":
        path = samples(args.out, args.sizes, difficulty=args.difficulty)
    elif args.command == "cost":
        path = cost(args.csv, args.out, args.note)
    elif args.command == "accuracy":
        path = accuracy(args.csv, args.out, args.metric)
    else:
        path = curves(args.run_dir, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
