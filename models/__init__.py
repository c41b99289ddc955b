"""The zoo's models: the shared backbone builder, the named layouts, the one build function, checkpoint loading.

Importing this package registers the named layouts and the zoo's families in timm's registry
(``timm.create_model("identityformer_s12")``). ``build_model(spec, data)`` builds any of them (or any timm model).
"""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from . import (  # noqa: F401  (register the layouts; the families also register their names in timm)
    affnet_family,
    comparison_backbones,
    hydra_family,
    isotropic_family,
    metaformer_baselines,
    stripmlp_family,
    vim2_family,
)
from .backbone import MetaFormer
from .checkpoint import load_checkpoint
from .factory import build_model, create_model, layout_config, list_layouts

__all__ = ["MetaFormer", "build_model", "create_model", "layout_config", "list_layouts", "load_checkpoint"]
