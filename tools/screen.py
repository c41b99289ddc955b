"""The capability screen's analysis: from the jobs of ``sweep=probes`` to the table, the figures and the rank check.

    python tools/screen.py multirun/probes/screen --out docs/results/screen          # everything below one folder
    python tools/screen.py multirun/probes/screen --out docs/results/screen --erf-images 32

Reads every job's ``summary.json`` (through ``collect_results.collect``) and writes to ``--out``:

- ``screen.csv``: one row per job (mixer, probe, seed, final top-1, params, GMACs, training images/s, wall minutes);
- ``summary.csv``: one row per mixer: per probe the mean and standard deviation of the final top-1 over the seeds,
  the aggregate score, params, GMACs, training images/s;
- ``probes.png``: example images of every probe and class;
- ``heatmap.png``: mixer x probe, colour = chance-normalised accuracy, text = mean ± std;
- ``cost.png``: aggregate score against GMACs per image and against measured training images/s;
- ``erf.png`` / ``erf.json``: effective receptive fields of the last block's centre token of every mixer in the
  isotropic backbone, at init and trained (averaged over the screen's checkpoints of that mixer on every probe);
- ``screen.md``: the tables (Markdown) and the checks below, for the results page.

The aggregate score of a mixer is the mean over the probes of its chance-normalised accuracy
``(top1 - chance) / (100 - chance)`` (0: chance, 1: perfect), computed per seed and then averaged. The rank check
is the Spearman correlation between the aggregate and the ImageNet top-1 of the MetaFormer baselines (Yu et al.,
TPAMI 2024: IdentityFormer-S12 74.6, RandFormer-S12 76.6, PoolFormerV2-S12 78.0, ConvFormer-S18 83.0, CAFormer-S18
83.6, for identity, random, pooling, sepconv, attention), once on the seed-mean aggregate and once per seed. The
screen's own checks: per probe, the best and worst mixers' means differ by more than 3 x the larger of their two seed
standard deviations; no probe has every mixer at chance (mean below chance + 5 points) or at ceiling (mean >= 95).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ImageNet-1K top-1 of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024, Tables):
# one backbone family, only the token mixer differs (S12 for identity/random/pooling; S18 for sepconv/attention).
IMAGENET_TOP1 = {"identity": 74.6, "random": 76.6, "pooling": 78.0, "sepconv": 83.0, "attention": 83.6}
CHANCE_MARGIN = 5.0  # points above chance that still count as "at chance"
CEILING = 95.0  # a mean at or above this is "at ceiling"
SEPARATION = 3.0  # best - worst must exceed this many times the larger seed std


def probe_of(data_name: str) -> str:
    return data_name.removeprefix("probe_")


def job_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished probe job below ``run_dir``: mixer, probe, seed, final/best top-1, params, GMACs,
    training images/s, wall minutes (``collect_results.job_row``)."""
    from mixerzoo.tools.results import collect

    rows = []
    for row in collect(run_dir):
        if not str(row.get("data", "")).startswith("probe_"):
            continue
        summary = json.loads((Path(run_dir) / row["job"] / "summary.json").read_text())
        if summary.get("stopped_by") or summary.get("epochs_completed") != summary.get("epochs_total"):
            print(f"left out (stopped before the end): {row['job']}")
            continue
        rows.append({**row, "probe": probe_of(row["data"])})
    if not rows:
        raise FileNotFoundError(f"No probe jobs (data=probe_*) below {run_dir}.")
    return rows


def chance(probe: str) -> float:
    from mixerzoo.training.probes import PROBES

    return 100.0 / PROBES[probe].num_classes


def normalised(top1: float, probe: str) -> float:
    """(top1 - chance) / (100 - chance): 0 at chance, 1 at 100 %."""
    c = chance(probe)
    return (top1 - c) / (100.0 - c)


def table(rows: Sequence[Mapping[str, Any]], metric: str = "final_top1") -> dict[str, dict[str, list[float]]]:
    """mixer -> probe -> the metric of each seed (in seed order)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get(metric) is not None:
            out[row["mixer"]][row["probe"]].append((int(row["seed"]), float(row[metric])))
    return {m: {p: [v for _, v in sorted(vs)] for p, vs in probes.items()} for m, probes in out.items()}


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate_per_seed(results: Mapping[str, Mapping[str, Sequence[float]]], probes: Sequence[str]) -> dict:
    """mixer -> [aggregate score of seed i]: the mean over probes of the chance-normalised accuracy of that seed."""
    out = {}
    for mixer, by_probe in results.items():
        seeds = min(len(by_probe.get(p, [])) for p in probes)
        out[mixer] = [float(np.mean([normalised(by_probe[p][s], p) for p in probes])) for s in range(seeds)]
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's r of the ranks; NaN when either input is
    constant (no ranking to compare)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")  # a constant input has no ranking
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_check(aggregates: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Spearman's rho between the screen's aggregate and the MetaFormer baselines' ImageNet top-1, on the seed-mean
    aggregate and per seed (the mixers of ``IMAGENET_TOP1`` that the screen ran)."""
    mixers = [m for m in IMAGENET_TOP1 if m in aggregates]
    if len(mixers) < 3:
        return {"mixers": mixers, "rho": None, "rho_per_seed": []}
    imagenet = [IMAGENET_TOP1[m] for m in mixers]
    mean = [float(np.mean(aggregates[m])) for m in mixers]
    seeds = min(len(aggregates[m]) for m in mixers)
    per_seed = [spearman([aggregates[m][s] for m in mixers], imagenet) for s in range(seeds)]
    return {"mixers": mixers, "rho": spearman(mean, imagenet), "rho_per_seed": per_seed}


def probe_checks(results: Mapping[str, Mapping[str, Sequence[float]]], probes: Sequence[str]) -> list[dict]:
    """Per probe: best and worst mixer (by mean), their gap, the larger of their seed stds, whether the gap exceeds
    ``SEPARATION`` x that std, and whether every mixer is at chance or at ceiling."""
    checks = []
    for probe in probes:
        means = {m: float(np.mean(r[probe])) for m, r in results.items() if r.get(probe)}
        stds = {m: _std(r[probe]) for m, r in results.items() if r.get(probe)}
        best, worst = max(means, key=means.get), min(means, key=means.get)
        gap, spread = means[best] - means[worst], max(stds[best], stds[worst])
        checks.append(
            dict(
                probe=probe,
                best=best,
                best_mean=means[best],
                worst=worst,
                worst_mean=means[worst],
                gap=gap,
                larger_std=spread,
                separated=gap > SEPARATION * spread,
                all_at_chance=all(v < chance(probe) + CHANCE_MARGIN for v in means.values()),
                all_at_ceiling=all(v >= CEILING for v in means.values()),
            )
        )
    return checks


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return float(np.mean(values)) if values else None


def summary_rows(
    rows: Sequence[Mapping[str, Any]], results: Mapping[str, Mapping[str, Sequence[float]]], probes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per mixer (best aggregate first): per probe mean/std, the aggregate mean/std over seeds, cost."""
    aggregates = aggregate_per_seed(results, probes)
    out = []
    for mixer in sorted(results, key=lambda m: -float(np.mean(aggregates[m]))):
        mine = [r for r in rows if r["mixer"] == mixer]
        row: dict[str, Any] = {"mixer": mixer}
        for probe in probes:
            row[f"{probe}_mean"] = float(np.mean(results[mixer][probe]))
            row[f"{probe}_std"] = _std(results[mixer][probe])
        row["aggregate_mean"] = float(np.mean(aggregates[mixer]))
        row["aggregate_std"] = _std(aggregates[mixer])
        row["params_m"] = _mean(mine, "params_m")
        row["gmacs"] = _mean(mine, "gmacs")
        row["train_img_s"] = _mean(mine, "train_img_s")
        row["wall_min"] = sum(float(r["wall_min"]) for r in mine if r.get("wall_min") is not None)
        row["jobs"] = len(mine)
        row["seeds"] = min(len(results[mixer][p]) for p in probes)
        out.append(row)
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    return path


def heatmap(summary: Sequence[Mapping[str, Any]], probes: Sequence[str], path: Path) -> Path:
    """Mixers (rows, best aggregate first) x probes plus the aggregate: colour = chance-normalised accuracy."""
    from mixerzoo.tools.plots import pyplot, save

    plt = pyplot()
    columns = [*probes, "aggregate"]
    grid = np.array(
        [[normalised(r[f"{p}_mean"], p) for p in probes] + [r["aggregate_mean"]] for r in summary], dtype=float
    )
    fig, ax = plt.subplots(figsize=(1.25 * len(columns) + 1.5, 0.42 * len(summary) + 1.2))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, r in enumerate(summary):
        for j, p in enumerate(columns):
            mean, std = (
                (r[f"{p}_mean"], r[f"{p}_std"]) if p != "aggregate" else (r["aggregate_mean"], r["aggregate_std"])
            )
            text = f"{mean:.1f}±{std:.1f}" if p != "aggregate" else f"{mean:.2f}±{std:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(columns)), [f"{p}\n(chance {chance(p):.0f})" for p in probes] + ["aggregate\n(0-1)"])
    seeds = sorted({r["seeds"] for r in summary})
    ax.set_yticks(
        range(len(summary)), [f"{r['mixer']} ({r['seeds']})" if len(seeds) > 1 else r["mixer"] for r in summary]
    )
    ax.tick_params(labelsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="(top-1 - chance) / (100 - chance)")
    where = f"{seeds[0]} seeds" if len(seeds) == 1 else "the seeds in brackets"
    ax.set_title(f"Capability screen: final val top-1 %, mean ± std over {where}", fontsize=9)
    return save(fig, path)


def cost_plot(summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Aggregate score (mean ± std over seeds) against GMACs per image and against training images/s."""
    from mixerzoo.tools.plots import mixer_styles, plain_log_axis, pyplot, save

    plt = pyplot()
    styles = mixer_styles([r["mixer"] for r in summary])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, key, label in (
        (axes[0], "gmacs", "GMACs per image (forward)"),
        (axes[1], "train_img_s", "training images/s (1 thread, shared CPU)"),
    ):
        for r in summary:
            if r.get(key):
                style = styles[r["mixer"]]
                ax.errorbar(
                    r[key],
                    r["aggregate_mean"],
                    yerr=r["aggregate_std"],
                    ls="none",
                    capsize=2,
                    label=r["mixer"],
                    color=style["color"],
                    marker=style["marker"],
                )
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("aggregate score (0 chance, 1 perfect)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Capability against cost (isoformer_tiny, 8x8 tokens)", fontsize=9)
    return save(fig, path)


def samples(path: Path, per_class: int = 3) -> Path:
    """Validation images of every probe: one row per probe, ``per_class`` images of each class in turn."""
    from mixerzoo.tools.plots import pyplot, save
    from mixerzoo.training.probes import PROBES, generate

    plt = pyplot()
    cols = 2 * per_class
    fig, axes = plt.subplots(len(PROBES), cols, figsize=(1.3 * cols, 1.45 * len(PROBES)))
    for row, name in enumerate(PROBES):
        images, labels = generate(name, cols, seed=0, split="val")
        for col in range(cols):
            ax = axes[row, col]
            ax.imshow(images[col], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {labels[col]}", fontsize=7)
    fig.suptitle("The probes (label under each name; 8 x 8 cells of 4 x 4 px)", fontsize=9)
    return save(fig, path)


def probe_images(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` validation images of every probe (normalised as the probe configs: ink 1, blank 0)."""
    from mixerzoo.training.probes import PROBES, generate

    per = max(1, count // len(PROBES))
    images = np.concatenate([generate(name, per, seed, "val")[0] for name in PROBES])
    return torch.from_numpy(images).float()[:, None] / 255


def erf_records(run_dir: str | Path, mixers: Sequence[str], num_images: int) -> list[dict[str, Any]]:
    """ERF (``tools.erf.effective_receptive_field``) of the last block's centre token per mixer, at init and trained
    (averaged over every checkpoint of that mixer below ``run_dir``, all probes and seeds), on probe images."""
    from omegaconf import OmegaConf

    import mixerzoo
    from mixerzoo.registry import spec_label
    from mixerzoo.tools.erf import build_for, effective_receptive_field, mass_radii

    images = probe_images(num_images)
    checkpoints: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for config_file in sorted(Path(run_dir).rglob(".hydra/config.yaml")):
        job = config_file.parent.parent
        cfg = OmegaConf.load(config_file)
        if (job / "last.pth").exists() and str(cfg.data.name).startswith("probe_"):
            checkpoints[spec_label(cfg.model.get("mixer"))].append((job / "last.pth", cfg))
    records = []
    for mixer in mixers:
        if not checkpoints.get(mixer):
            continue
        cfg = checkpoints[mixer][0][1]
        torch.manual_seed(0)
        states = [("init", [build_for(cfg)])]
        trained = []
        for checkpoint, job_cfg in checkpoints[mixer]:
            net = build_for(job_cfg)
            mixerzoo.load_checkpoint(net, str(checkpoint))
            trained.append(net)
        states.append(("trained", trained))
        for state, nets in states:
            erf = torch.stack([effective_receptive_field(net, images, -1) for net in nets]).mean(0)
            r50, r90 = mass_radii(erf)
            records.append(
                dict(mixer=mixer, state=state, level=3, models=len(nets), r50=r50, r90=r90, map=erf.tolist())
            )
            print(f"{mixer:14s} {state:8s} r50 {r50:5.1f} px, r90 {r90:5.1f} px", flush=True)
    return records


def markdown(
    summary: Sequence[Mapping[str, Any]], probes: Sequence[str], checks: Sequence[Mapping[str, Any]], rank: Mapping
) -> str:
    """The results tables for the page."""
    head = ["mixer", "seeds", *probes, "aggregate", "params (M)", "GMACs", "train img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in summary:
        cells = [r["mixer"], str(r["seeds"])] + [f"{r[f'{p}_mean']:.1f} ± {r[f'{p}_std']:.1f}" for p in probes]
        cells += [f"{r['aggregate_mean']:.2f} ± {r['aggregate_std']:.2f}", f"{r['params_m']:.3f}"]
        cells += [
            f"{r['gmacs']:.4f}" if r["gmacs"] else "n/a",
            f"{r['train_img_s']:.0f}" if r["train_img_s"] else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| probe | chance | best | worst | gap | larger std | gap > 3 std | all at chance | all at ceiling |"]
    lines.append("|" + "|".join(" --- " for _ in range(9)) + "|")
    for c in checks:
        lines.append(
            f"| {c['probe']} | {chance(c['probe']):.0f} | {c['best']} {c['best_mean']:.1f} | {c['worst']} "
            f"{c['worst_mean']:.1f} | {c['gap']:.1f} | {c['larger_std']:.1f} | {'yes' if c['separated'] else 'no'} "
            f"| {'yes' if c['all_at_chance'] else 'no'} | {'yes' if c['all_at_ceiling'] else 'no'} |"
        )
    if rank.get("rho") is not None:
        values = rank["rho_per_seed"]
        finite = [v for v in values if np.isfinite(v)]
        per_seed = ", ".join(f"{v:+.2f}" if np.isfinite(v) else "undefined (the 5 aggregates tie)" for v in values)
        spread = f"{np.mean(finite):+.2f} ± {_std(finite):.2f} over {len(finite)} seed(s)" if finite else "n/a"
        lines += [
            "",
            f"Spearman ρ (screen aggregate vs ImageNet top-1, {len(rank['mixers'])} mixers: "
            f"{', '.join(rank['mixers'])}): **{rank['rho']:+.2f}** on the seed-mean aggregate; per seed {per_seed} "
            f"(mean ± std {spread}).",
        ]
    return "\n".join(lines) + "\n"


def cpu_times(folder: str | Path) -> dict[str, dict[str, float]]:
    """Per invocation, the ``/usr/bin/time -f "%e %U %S"`` files of a queued screen (``<name>.txt``: wall, user and
    system seconds on the last line; a killed invocation's file says so first): name -> {wall, cpu}."""
    times = {}
    for path in sorted(Path(folder).glob("s*_*.txt")):
        lines = path.read_text().split("\n")
        numbers = [line.split() for line in lines if len(line.split()) == 3]
        if numbers:
            wall, user, system = (float(v) for v in numbers[-1])
            times[path.stem] = {"wall": wall, "cpu": user + system, "killed": "signal" in lines[0]}
    return times


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a sweep=probes multirun directory (or a folder above several)")
    parser.add_argument("--out", default="outputs/screen", help="folder for the CSVs, figures and screen.md")
    parser.add_argument("--metric", default="final_top1", choices=["final_top1", "best_top1"])
    parser.add_argument("--erf-images", type=int, default=32, help="probe images per ERF map (0: no ERF figure)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    parser.add_argument("--times", help="folder of /usr/bin/time files of the queued invocations (CPU totals)")
    args = parser.parse_args(argv)
    from mixerzoo.training.probes import PROBES

    out = Path(args.out)
    rows = job_rows(args.run_dir)
    results = table(rows, args.metric)
    probes = [p for p in PROBES if any(p in r for r in results.values())]
    complete = {m: r for m, r in results.items() if all(r.get(p) for p in probes)}
    if len(complete) < len(results):
        print(f"left out (missing probes): {', '.join(sorted(set(results) - set(complete)))}")
    summary = summary_rows(rows, complete, probes)
    checks = probe_checks(complete, probes)
    rank = rank_check(aggregate_per_seed(complete, probes))
    job_columns = ["mixer", "probe", "seed", "final_top1", "best_top1", "params_m", "gmacs", "train_img_s", "wall_min"]
    write_csv(sorted(rows, key=lambda r: (r["mixer"], r["probe"], int(r["seed"]))), out / "screen.csv", job_columns)
    write_csv(summary, out / "summary.csv", list(summary[0]))
    text = markdown(summary, probes, checks, rank)
    if args.times:
        times = cpu_times(args.times)
        cpu = sum(t["cpu"] for t in times.values())
        text += (
            f"\nCPU time of the {len(times)} invocations (user + system of each `train.py` process, start-up included):"
            f" {cpu / 60:.1f} min in all.\n"
        )
        (out / "times.json").write_text(json.dumps(times, indent=1))
    (out / "screen.md").write_text(text)
    (out / "checks.json").write_text(json.dumps({"probes": checks, "rank": rank}, indent=1))
    print(text)
    if not args.no_plots:
        samples(out / "probes.png")
        heatmap(summary, probes, out / "heatmap.png")
        cost_plot(summary, out / "cost.png")
        if args.erf_images:
            from mixerzoo.tools.erf import plot

            records = erf_records(args.run_dir, [r["mixer"] for r in summary], args.erf_images)
            (out / "erf.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "map"} for r in records]))
            plot(records, out / "erf.png", 32)
    return {"summary": summary, "checks": checks, "rank": rank}


if __name__ == "__main__":
    main()
