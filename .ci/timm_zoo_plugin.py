"""pytest plugin for ``.ci/timm_model_tests.sh``: runs timm's own ``tests/test_models.py`` over the zoo's model
names only.

Importing ``models`` registers the zoo in timm before ``test_models.py`` builds its parameter lists; collection
then keeps the tests parametrised with a zoo name (timm's other models and its model-specific tests are
deselected). timm's size caps (``TARGET_*``/``MAX_*``) and exclusion lists apply unchanged. On top of them, the
memory- and time-conscious subset below, as timm's CI does with its ``EXCLUDE_*`` lists for big models.
"""

from __future__ import annotations

import fnmatch

import pytest
import timm

_BUILTIN = set(timm.list_models())
import mixerzoo  # noqa: E402, F401  (registers the zoo in timm)

ZOO = sorted(set(timm.list_models()) - _BUILTIN)

# One member per family, its smallest: it runs every test. The family's other members share its code (they differ in
# depths and widths); they run the config tests (every name, on the meta device) and the forward test.
SMALLEST = ["identityformer_s12", "randformer_s12", "stripmlp_t_light", "affnet_et", "hydra_vit_s", "vim2_t"]
ALWAYS = ["test_model_default_cfgs*", "test_model_forward"]

# (test-name pattern, model-name patterns, reason), first match wins: skipped there, reported with the reason
SUBSET = [
    (
        "test_model_forward*torchscript",
        ["hydra_vit_*", "vim2_*"],
        "excluded from TorchScript as timm excludes its own models (EXCLUDE_JIT_FILTERS): the SSM mixers dispatch "
        "to mamba_ssm's fused kernels or a PyTorch scan with a custom autograd.Function (mixers/ops), which "
        "TorchScript cannot compile; FX and torch.compile cover them",
    ),
    (
        "test_model_forward",
        ["vim2_s", "vim2_b", "hydra_vit_b", "*_m48", "stripmlp_b"],
        "memory and time: a grad-enabled forward at 224 of the largest members (vim2_s/b peak at 6.1/7.9 GB)",
    ),
]
TIME_REASON = (
    "time on 2 CPU cores: the heavy checks run on the family's smallest member, which shares this model's code"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's marker (not installed here)")
    missing = sorted(set(SMALLEST) - set(ZOO))
    if not ZOO or missing:
        raise pytest.UsageError(f"timm_zoo_plugin: the zoo registers {ZOO}; SMALLEST names unknown ones {missing}.")


def _model_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("model_name") if callspec is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        name = _model_name(item)
        if name not in ZOO:
            dropped.append(item)
            continue
        kept.append(item)
        test = item.originalname
        for test_pattern, model_patterns, reason in SUBSET:
            if fnmatch.fnmatch(test, test_pattern) and any(fnmatch.fnmatch(name, p) for p in model_patterns):
                item.add_marker(pytest.mark.skip(reason=f"zoo subset: {reason}"))
                break
        else:
            if name not in SMALLEST and not any(fnmatch.fnmatch(test, p) for p in ALWAYS):
                item.add_marker(pytest.mark.skip(reason=f"zoo subset: {TIME_REASON}"))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
