"""The grid check of mixers whose weights fit one token grid (``strip_mlp``, ``random``).

``check_grid`` reads the grid from the tensor and returns the tensor unchanged, so a mixer runs its input through
it: the check stays in the data path of FX graphs (graph extractors drop calls whose result is unused). It is an
FX leaf (``torch.fx.wrap`` in each module that calls it, and timm's notrace registry for timm's extractors): the
comparison with the built grid runs on real shapes when the graph runs, not on proxies while it is traced.
"""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function

__all__ = ["GridMismatchError", "built_for", "check_grid"]


class GridMismatchError(ValueError):
    """An input whose token grid is not the one a grid-bound mixer was built for (a size the model cannot take,
    not a bug: benchmarks report such sizes as n/a)."""


def built_for(img_size: tuple[int, ...] | None) -> str:
    """The input size a grid comes from, for error messages (empty when the mixer was built without one)."""
    return f" (the grid of a {img_size[0]}x{img_size[1]} input)" if img_size else ""


@register_notrace_function
def check_grid(x: torch.Tensor, grid: tuple[int, int], mixer: str, origin: str, advice: str) -> torch.Tensor:
    """``x`` (B, H, W, C) if its grid is ``grid``; else an error naming the ``mixer``, the grid it was
    built for (``origin``: where that grid comes from, see ``built_for``) and ``advice`` (a ``GridMismatchError``)."""
    height, width = x.shape[1], x.shape[2]
    if height != grid[0] or width != grid[1]:
        raise GridMismatchError(
            f"{mixer}: built for a {grid[0]}x{grid[1]} token grid{origin}, got {height}x{width}. {advice}"
        )
    return x
