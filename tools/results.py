"""Collect the ``summary.json`` files of a training multirun into one Markdown table (and optionally a CSV).

    python train.py -m model=metaformer_s12 model.mixer=pooling,attention,aff data.root=/imagenet   # or sweep=...
    python collect_results.py multirun/train/<run id>            # every job below that directory
    python collect_results.py outputs/digits_mixers --csv mixers.csv
    python collect_results.py multirun/pathfinder/<run id> --by-mixer   # one row per mixer, mean ± std over seeds
    python collect_results.py multirun/pathfinder/<run id> --by-mixer --csv by_mixer.csv   # that table as a CSV

One row per job: the job directory (its Hydra overrides), the model (config name or timm name), the mixer (the
model's ``mixer`` spec; per-stage lists joined with ``/``), params (from ``summary.json``), forward GMACs of one
image at the job's ``data.img_size`` (counted as in ``benchmark.py``: FlopCounterMode on the meta device with the
FFT and scan rules), training images/s (``train_images_per_sec``, measured by the run on its own device), best and
final top-1, and the epochs completed; on request (``--columns``, always in the CSV) the dataset, image size, seed
and the job's wall time in minutes (from its ``.hydra/config.yaml`` being written to its ``summary.json``: Hydra
rewrites the config at every launch, so for a resumed job this is its last launch only). The model
is rebuilt from the job's ``.hydra/config.yaml``; a job without one (or whose model cannot be built) gets ``n/a``
MACs.

``--by-mixer`` groups the jobs by model and mixer instead: one row per mixer with params and, per image size, GMACs,
training images/s and top-1 (``--metric``, default ``final_top1``) as mean ± standard deviation over the seeds (the
job count in brackets when there are several). With ``--csv`` it writes that aggregated table: one CSV row per
model, mixer and image size, with ``<column>_mean``, ``<column>_std`` (empty for one job) and ``jobs``
(``BY_MIXER_COLUMNS``); without ``--by-mixer`` the CSV holds one row per job, every column.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mixerzoo.models import build_model
from mixerzoo.models.factory import legacy_spec
from mixerzoo.models.macs import count_macs
from mixerzoo.registry import spec_label

COLUMNS = ["job", "model", "mixer", "params_m", "gmacs", "train_img_s", "best_top1", "final_top1", "epochs"]
EXTRA_COLUMNS = ["data", "img_size", "seed", "wall_min"]
AVERAGED = ("train_img_s", "best_top1", "final_top1")  # mean and std over the seeds in the --by-mixer CSV
BY_MIXER_COLUMNS = [
    "model",
    "mixer",
    "data",
    "img_size",
    "params_m",
    "gmacs",
    *(f"{column}_{stat}" for column in AVERAGED for stat in ("mean", "std")),
    "jobs",
]


def _recorded_model_choice(job_dir: Path) -> str:
    """The ``model=`` choice Hydra recorded for a job (runs of earlier versions kept no name in the model config)."""
    from omegaconf import OmegaConf

    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    if hydra_file.exists():
        return str(OmegaConf.load(hydra_file).hydra.runtime.choices.get("model") or "")
    return ""


def job_row(summary_file: Path, root: Path) -> dict[str, Any]:
    """One table row from a job's ``summary.json`` and (if present) its ``.hydra/config.yaml``."""
    summary = json.loads(summary_file.read_text())
    job_dir = summary_file.parent
    params = summary.get("params")
    row: dict[str, Any] = {
        "job": str(job_dir.relative_to(root)) if job_dir != root else job_dir.name,
        "params_m": params / 1e6 if params else None,
        "train_img_s": summary.get("train_images_per_sec"),
        "best_top1": summary.get("best_top1"),
        "final_top1": summary.get("final_top1"),
        "epochs": summary.get("epochs_completed"),
    }
    config_file = job_dir / ".hydra" / "config.yaml"
    if not config_file.exists():
        return row
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_file)
    row.update(data=cfg.data.get("name"), img_size=cfg.data.get("img_size"), seed=cfg.get("seed"))
    row["wall_min"] = max(0.0, summary_file.stat().st_mtime - config_file.stat().st_mtime) / 60
    row["model"] = str(cfg.model.get("name") or cfg.model.get("model_name") or _recorded_model_choice(job_dir))
    row["mixer"] = spec_label(cfg.model.get("mixer"))
    try:
        data = OmegaConf.to_container(cfg.data, resolve=True)
        if data["num_classes"] is None:  # data=folder: the count the run settled from the data
            data["num_classes"] = summary.get("num_classes")
        with torch.device("meta"):  # built as train.py built it, for the job's image size
            model = build_model(legacy_spec(cfg.model), data)
            inputs = torch.empty(1, data["in_chans"], data["img_size"], data["img_size"])
        row["gmacs"] = count_macs(model.eval(), inputs).total / 1e9
    except Exception as error:  # MACs are a convenience here; the accuracy columns stand without them
        row["note"] = f"MACs n/a: {error}"
    return row


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Rows for every ``summary.json`` below ``root``, sorted by job directory (Hydra's job number first)."""
    root = Path(root)
    files = sorted(root.rglob("summary.json"), key=lambda p: _job_sort_key(p.parent.name))
    if not files:
        raise FileNotFoundError(f"No summary.json below {root} (is it a train.py run or multirun directory?).")
    return [job_row(f, root) for f in files]


def _job_sort_key(name: str) -> tuple[int, str]:
    number = name.split("_", 1)[0]
    return (int(number), name) if number.isdigit() else (1 << 30, name)


def _format(column: str, value: Any) -> str:
    if value is None or value == "":
        return "n/a" if column in ("params_m", "gmacs", "train_img_s", "best_top1", "final_top1") else ""
    if isinstance(value, float):
        if column == "wall_min":
            return f"{value:.1f}"
        if column == "gmacs":
            return f"{value:.3g}"
        return f"{value:.0f}" if column == "train_img_s" else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _mean_std(values: Sequence[float], digits: int) -> str:
    """``mean ± std (n)`` over several values, the value alone for one, ``n/a`` for none."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} ({len(values)})"


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[Any, list[dict[str, Any]]]]:
    """(model, mixer) -> image size -> its jobs, in the order the mixers first appear."""
    groups: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        key = (row.get("model") or "", row.get("mixer") or "")
        groups.setdefault(key, {}).setdefault(row.get("img_size"), []).append(row)
    return groups


def _sizes(groups: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]]) -> list[Any]:
    return sorted({size for jobs in groups.values() for size in jobs}, key=lambda s: (s is None, s or 0))


def by_mixer_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``--by-mixer`` table as records, one per (model, mixer, image size): params and GMACs, then the mean and
    standard deviation over the jobs (seeds) of training images/s and top-1 (``std`` is None for a single job)."""
    records = []
    for (model, mixer), jobs in _groups(rows).items():
        for size, at in sorted(jobs.items(), key=lambda item: (item[0] is None, item[0] or 0)):
            record: dict[str, Any] = {"model": model, "mixer": mixer, "data": at[0].get("data"), "img_size": size}
            for column in ("params_m", "gmacs"):
                record[column] = next((r[column] for r in at if r.get(column) is not None), None)
            for column in AVERAGED:
                values = [r[column] for r in at if r.get(column) is not None]
                record[f"{column}_mean"] = statistics.mean(values) if values else None
                record[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
            record["jobs"] = len(at)
            records.append(record)
    return records


def by_mixer_table(rows: Sequence[dict[str, Any]], metric: str = "final_top1") -> str:
    """One row per (model, mixer): params, then per image size GMACs, training images/s and ``metric`` as mean ±
    standard deviation over the jobs (seeds). Rows in the order the mixers first appear."""
    groups = _groups(rows)
    sizes = _sizes(groups)
    header = ["model", "mixer", "params_m"]
    for size in sizes:
        at = f" @{size}" if size is not None else ""
        header += [f"gmacs{at}", f"train_img_s{at}", f"{metric}{at}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for (model, mixer), jobs in groups.items():
        params = [r["params_m"] for size_jobs in jobs.values() for r in size_jobs if r.get("params_m") is not None]
        cells = [model, mixer, _format("params_m", params[0] if params else None)]
        for size in sizes:
            at = jobs.get(size, [])
            gmacs = [r["gmacs"] for r in at if r.get("gmacs") is not None]
            speed = [r["train_img_s"] for r in at if r.get("train_img_s") is not None]
            scores = [r[metric] for r in at if r.get(metric) is not None]
            cells += [_format("gmacs", gmacs[0] if gmacs else None), _mean_std(speed, 0), _mean_std(scores, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a multirun directory (or a single run's directory)")
    parser.add_argument(
        "--csv",
        help="also write the table to this CSV file: one row per job (every column), or with --by-mixer the "
        "aggregated table (mean and std over seeds per model, mixer and size)",
    )
    parser.add_argument(
        "--columns", nargs="+", default=COLUMNS, choices=COLUMNS + EXTRA_COLUMNS, help="columns to show, in order"
    )
    parser.add_argument("--by-mixer", action="store_true", help="one row per mixer: mean ± std over seeds, per size")
    parser.add_argument("--metric", default="final_top1", choices=["final_top1", "best_top1"], help="for --by-mixer")
    args = parser.parse_args(argv)
    rows = collect(args.run_dir)
    print(by_mixer_table(rows, args.metric) if args.by_mixer else markdown_table(rows, args.columns))
    if args.csv:
        records, columns = (by_mixer_rows(rows), BY_MIXER_COLUMNS) if args.by_mixer else (rows, COLUMNS + EXTRA_COLUMNS)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
    return rows
