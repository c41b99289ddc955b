"""Token mixers: one module each, all ``(B, H, W, C) -> (B, H, W, C)``, built by name through the registry."""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from timm.layers import register_notrace_module

from . import (  # noqa: F401  (registers the mixers)
    aff,
    attention,
    hydra_mixer,
    identity,
    mamba_mixer,
    matrix_mixer,
    pooling,
    random_mixing,
    sepconv,
    strip_mlp,
)
from .registry import (
    create_channel_mixer,
    create_mixer,
    list_channel_mixers,
    list_mixers,
    register_channel_mixer,
    register_mixer,
)

# Mixers that FX graphs (timm's ``feature_cls="fx"``, torchvision's feature extractors, timm's FX tests) keep as one
# leaf call instead of tracing into them: they run their FFT / scan under ``autocast_off(x.device.type)`` and pick
# a kernel by the tensors' device (fused CUDA kernels or the PyTorch path), decisions that must be taken when the
# graph runs, on real tensors, not once at trace time on proxies.
# ``matrix_mixer`` is a factory: its structures share the class ``MatrixMixer``, which FX tracers match by isinstance.
FX_LEAF_MIXERS = (
    aff.AFF,
    hydra_mixer.Hydra,
    mamba_mixer.MambaMixer,
    mamba_mixer.MambaChannelMixer,
    matrix_mixer.MatrixMixer,
)
for _cls in FX_LEAF_MIXERS:
    register_notrace_module(_cls)

__all__ = [
    "FX_LEAF_MIXERS",
    "create_channel_mixer",
    "create_mixer",
    "list_channel_mixers",
    "list_mixers",
    "register_channel_mixer",
    "register_mixer",
]
