"""Effective receptive fields (Luo, Li, Urtasun, Zemel, NeurIPS 2016) of every token mixer in the same backbone.

    python tools/erf.py                                   # every mixer in metaformer_tiny at init, Pathfinder-32
    python tools/erf.py --run multirun/pathfinder/<id>    # and the trained checkpoints of that sweep
    python tools/erf.py --img-size 64 --levels 0 --images 16 --mixers pooling attention --out outputs/erf64 \
        --override model.block.norm=batchnorm model.block.norm_bias=true     # the grid's backbone, init only

For one model and one feature level (``forward_intermediates``: stage outputs; blocks in an isotropic model), the
map is the gradient of the level's centre token, summed over its channels, with respect to the input image: its
absolute value summed over the input channels and averaged over ``--images`` Pathfinder validation images (the
model in eval mode). A trained map is averaged over the images and over every checkpoint (seed) of the mixer in the
run (each job's ``last.pth``). Two numbers summarise a map: the radii of the smallest discs about its centroid that
hold 50 % and 90 % of its mass, in input pixels.

Outputs in ``--out`` (default ``outputs/erf``): ``erf.png`` (rows: mixers; columns: init / trained per level;
log10 of the map over its maximum, the two radii drawn as circles; needs matplotlib: ``pip install -e ".[plots]"``),
``erf.json`` (radii and maps) and ``erf.md`` (the radii as a Markdown table).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

RADIUS_FRACTIONS = (0.5, 0.9)


def effective_receptive_field(model: nn.Module, images: torch.Tensor, level: int = 0) -> torch.Tensor:
    """``mean over images |d (sum_c y[c, h // 2, w // 2]) / d x|`` summed over input channels: an (H, W) map.

    ``y`` is feature level ``level`` of ``model.forward_intermediates`` (a negative level counts from the last).
    Images are independent in eval mode, so one backward of the batch sum gives every image's gradient."""
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    (y,) = model.forward_intermediates(x, indices=[level % len(model.feature_info)], intermediates_only=True)
    y[:, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    return x.grad.abs().sum(1).mean(0)


def mass_radii(erf: torch.Tensor | np.ndarray, fractions: Sequence[float] = RADIUS_FRACTIONS) -> list[float]:
    """Radii (pixels) of the smallest discs about the map's centroid holding each fraction of its mass."""
    erf = np.asarray(erf, dtype=np.float64)
    total = erf.sum()
    if total <= 0:
        return [float("nan")] * len(fractions)
    yy, xx = np.indices(erf.shape)
    cy, cx = (erf * yy).sum() / total, (erf * xx).sum() / total
    distance = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(distance)
    cumulative = np.cumsum(erf.ravel()[order]) / total
    return [float(distance[order][min(np.searchsorted(cumulative, f), len(order) - 1)]) for f in fractions]


def compose_train_config(overrides: Sequence[str]) -> Any:
    """``configs/train.yaml`` composed with ``overrides``, as ``train.py`` sees it."""
    from hydra import compose, initialize_config_dir

    from mixerzoo.training.config import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_for(cfg: Any) -> nn.Module:
    """The model of a (composed or saved) training config, built as ``train.py`` builds it (for the data size)."""
    from mixerzoo.models import build_model

    return build_model(cfg.model, cfg.data)


def pathfinder_images(count: int, img_size: int, difficulty: str = "hard", seed: int = 0) -> torch.Tensor:
    """``count`` Pathfinder validation images, normalised as ``data=pathfinder`` does ((x / 255 - 0.5) / 0.5)."""
    from mixerzoo.training.pathfinder import generate

    images, _ = generate(count, img_size, difficulty, seed=seed, split="val")
    return (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5


def trained_checkpoints(run_dir: str | Path, img_size: int) -> dict[str, list[tuple[Path, Any]]]:
    """mixer -> [(checkpoint, job config)] for every job below ``run_dir`` trained at ``img_size`` with a
    ``last.pth`` (or ``best.pth``)."""
    from omegaconf import OmegaConf

    from mixerzoo.registry import spec_label

    found: dict[str, list[tuple[Path, Any]]] = {}
    for config_file in sorted(Path(run_dir).rglob(".hydra/config.yaml")):
        job = config_file.parent.parent
        checkpoint = next((job / name for name in ("last.pth", "best.pth") if (job / name).exists()), None)
        cfg = OmegaConf.load(config_file)
        if checkpoint is None or cfg.data.img_size != img_size:
            continue
        found.setdefault(spec_label(cfg.model.get("mixer")), []).append((checkpoint, cfg))
    return found


def _init_config(
    mixer: str, trained: dict[str, list[tuple[Path, Any]]], model: str, img_size: int, overrides: Sequence[str]
) -> Any:
    if mixer in trained:
        return trained[mixer][0][1]
    base = [f"model={model}", f"model.mixer={mixer}", "data=pathfinder", f"data.img_size={img_size}"]
    return compose_train_config([*base, *overrides])


def compute(
    mixers: Sequence[str],
    img_size: int,
    levels: Sequence[int],
    num_images: int,
    run_dir: str | None = None,
    model: str = "metaformer_tiny",
    overrides: Sequence[str] = (),
    difficulty: str | None = None,
) -> list[dict[str, Any]]:
    """One record per (mixer, state, level): ``map`` (H x W list), ``r50``, ``r90``, ``models`` averaged. The init
    model of a mixer trained in ``run_dir`` is built from its first job's config (the same backbone, fresh weights);
    otherwise from ``model`` with ``overrides``. Every mixer sees the same images: the Pathfinder difficulty and seed
    the run trained on (its first job's ``data``), else those of ``data=pathfinder`` with ``overrides``;
    ``difficulty`` overrides the difficulty."""
    import mixerzoo

    trained = trained_checkpoints(run_dir, img_size) if run_dir else {}
    configs = {mixer: _init_config(mixer, trained, model, img_size, overrides) for mixer in mixers}
    data = next(iter(trained.values()))[0][1].data if trained else next(iter(configs.values())).data
    images = pathfinder_images(num_images, img_size, difficulty or data.pathfinder_difficulty, data.pathfinder_seed)
    records = []
    for mixer in mixers:
        cfg = configs[mixer]
        torch.manual_seed(0)
        states: list[tuple[str, list[nn.Module]]] = [("init", [build_for(cfg)])]
        if mixer in trained:
            nets = []
            for checkpoint, cfg in trained[mixer]:
                net = build_for(cfg)
                mixerzoo.load_checkpoint(net, str(checkpoint))
                nets.append(net)
            states.append(("trained", nets))
        for state, nets in states:
            for level in levels:
                erf = torch.stack([effective_receptive_field(net, images, level) for net in nets]).mean(0)
                r50, r90 = mass_radii(erf)
                records.append(
                    dict(mixer=mixer, state=state, level=level, models=len(nets), r50=r50, r90=r90, map=erf.tolist())
                )
                print(f"{mixer:14s} {state:8s} level {level}: r50 {r50:5.1f} px, r90 {r90:5.1f} px", flush=True)
    return records


def markdown(records: Sequence[dict[str, Any]], img_size: int) -> str:
    """Mixer rows; per level, init and trained r50 / r90 (pixels of the img_size input)."""
    levels = list(dict.fromkeys(r["level"] for r in records))
    by = {(r["mixer"], r["state"], r["level"]): r for r in records}
    header = ["mixer"] + [f"level {lv} {state} r50 / r90" for lv in levels for state in ("init", "trained")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for mixer in dict.fromkeys(r["mixer"] for r in records):
        cells = [mixer]
        for level in levels:
            for state in ("init", "trained"):
                r = by.get((mixer, state, level))
                cells.append(f"{r['r50']:.1f} / {r['r90']:.1f}" if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nRadii in pixels of the {img_size} x {img_size} input."


def plot(records: Sequence[dict[str, Any]], path: str | Path, img_size: int) -> None:
    """One heat map per (mixer, state, level): log10(map / max) from -3 to 0, circles at r50 (solid) and r90."""
    from mixerzoo.tools.plots import pyplot, save

    plt = pyplot()
    mixers = list(dict.fromkeys(r["mixer"] for r in records))
    levels = list(dict.fromkeys(r["level"] for r in records))
    columns = list(dict.fromkeys((r["state"], r["level"]) for r in records))
    columns.sort(key=lambda c: (levels.index(c[1]), c[0] != "init"))
    by = {(r["mixer"], r["state"], r["level"]): r for r in records}
    fig, axes = plt.subplots(
        len(mixers), len(columns), figsize=(1.5 * len(columns) + 1.2, 1.5 * len(mixers) + 0.5), layout="constrained"
    )
    axes = np.asarray(axes).reshape(len(mixers), len(columns))
    image = None
    for i, mixer in enumerate(mixers):
        for j, (state, level) in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            r = by.get((mixer, state, level))
            if i == 0:
                ax.set_title(f"{state}, level {level}", fontsize=8)
            if j == 0:
                ax.set_ylabel(mixer, fontsize=8)
            if r is None:
                ax.set_facecolor("0.9")
                continue
            erf = np.asarray(r["map"])
            shown = np.log10(np.maximum(erf / max(erf.max(), 1e-30), 1e-3))
            image = ax.imshow(shown, vmin=-3, vmax=0, cmap="magma", interpolation="nearest")
            yy, xx = np.indices(erf.shape)
            cy, cx = (erf * yy).sum() / erf.sum(), (erf * xx).sum() / erf.sum()
            for radius, style in ((r["r50"], "-"), (r["r90"], "--")):
                ax.add_patch(plt.Circle((cx, cy), radius, fill=False, color="cyan", lw=0.8, ls=style))
            ax.text(1, img_size - 2, f"{r['r50']:.0f}/{r['r90']:.0f}", color="white", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.3, aspect=30, label="log10 (map / max)")
    fig.suptitle(f"Effective receptive fields at {img_size} px (r50 / r90 in px)", fontsize=9)
    save(fig, path, dpi=64)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from mixerzoo.mixers import list_mixers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="+", default=None, help="token mixers (default: every registered one)")
    parser.add_argument("--model", default="metaformer_tiny", help="the backbone's model config")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, -1], help="feature levels (-1: the last)")
    parser.add_argument("--images", type=int, default=32, help="Pathfinder validation images to average over")
    parser.add_argument("--run", help="a train.py (multi)run directory: also the trained checkpoints of each mixer")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="Hydra overrides of the init models without --run (model.block.norm=...)",
    )
    parser.add_argument(
        "--difficulty",
        choices=["easy", "medium", "hard"],
        help="Pathfinder images to average over (default: the run's training difficulty, else data=pathfinder's)",
    )
    parser.add_argument("--out", default="outputs/erf", help="folder for erf.png, erf.json, erf.md")
    parser.add_argument("--no-plot", action="store_true", help="numbers only (no matplotlib needed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mixers = args.mixers or list_mixers()
    records = compute(
        mixers, args.img_size, args.levels, args.images, args.run, args.model, args.override, args.difficulty
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "erf.json").write_text(json.dumps(dict(img_size=args.img_size, records=records)))
    table = markdown(records, args.img_size)
    (out / "erf.md").write_text(table + "\n")
    print(table)
    if not args.no_plot:
        plot(records, out / "erf.png", args.img_size)
        print(f"wrote {out / 'erf.png'}")
    return records


if __name__ == "__main__":
    main()
