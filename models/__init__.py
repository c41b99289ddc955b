"""The zoo's models: the shared backbone builder, checkpoint loading and the named, timm-registered families.

Importing this package registers the zoo's models in timm's registry (``timm.create_model("identityformer_s12")``).
"""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from . import affnet_family, hydra_family, isotropic_family, metaformer_baselines, stripmlp_family, vim2_family  # noqa: F401  (register affnet*, hydra_vit_*, isoformer_*, identityformer_*, randformer_*, stripmlp_*, vim2_*)
from .backbone import MetaFormer
from .checkpoint import load_checkpoint
from .factory import CONFIG_DIR, create_model, list_model_configs, model_config

__all__ = ["CONFIG_DIR", "MetaFormer", "create_model", "list_model_configs", "load_checkpoint", "model_config"]
