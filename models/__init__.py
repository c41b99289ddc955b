"""The zoo's models: the shared backbone builder, checkpoint loading and the named, timm-registered families.

Importing this package registers the zoo's models in timm's registry (``timm.create_model("identityformer_s12")``).
"""

from . import affnet_family, hydra_family, metaformer_baselines, stripmlp_family, vim2_family  # noqa: F401  (register affnet*, hydra_vit_*, identityformer_*, randformer_*, stripmlp_*, vim2_*)
from .backbone import MetaFormer
from .checkpoint import load_checkpoint

__all__ = ["MetaFormer", "load_checkpoint"]
