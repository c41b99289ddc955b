"""mixerzoo: MetaFormer-style token mixers in one shared backbone, registered in timm, trained with Hydra.

The repository's folders install as one import package (``pyproject.toml`` maps ``mixerzoo`` to the repository
root): ``mixerzoo.mixers`` (the token-mixer registry), ``mixerzoo.models`` (the builder and the named families,
registered in timm on import), ``mixerzoo.training`` (config schema, data) and the scripts ``mixerzoo.train``,
``mixerzoo.benchmark`` (over ``mixerzoo.tools.benchmarking``). ``import mixerzoo`` registers every zoo model in timm.

    import mixerzoo
    model = mixerzoo.create_model("caformer_s18", num_classes=100)   # any zoo layout (list_layouts()) or timm name
"""

# Only as ``mixerzoo``: pytest imports the repository root's ``__init__.py`` under the folder's name (its package
# node for the root); that import must not load the zoo a second time under another name.
if __name__ == "mixerzoo":
    from .mixers import create_mixer, list_mixers, register_mixer
    from .models import MetaFormer, build_model, create_model, list_layouts, load_checkpoint

__all__ = [
    "MetaFormer",
    "build_model",
    "create_mixer",
    "create_model",
    "list_layouts",
    "list_mixers",
    "load_checkpoint",
    "register_mixer",
]
