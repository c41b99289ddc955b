"""pytest plugin for ``.ci/timm_model_tests.sh``: runs timm's own ``tests/test_models.py`` over the zoo's model
names only.

Importing ``mixerzoo`` registers the zoo in timm before ``test_models.py`` builds its parameter lists. Collection
keeps every test of timm's that is parametrised over model names and reaches a zoo name (``model_name`` is a zoo
name, or a zoo name with a pretrained tag, ``identityformer_s12.sail_in1k``); timm's other models and its
model-specific tests are deselected. timm picks the models of three tests by module (``FEAT_INTER_FILTERS``: the
modules whose models have ``forward_intermediates`` and the ``getter`` feature wrapper); every zoo model has both,
so the plugin adds the zoo's names to those tests (``BY_MODULE``).

Selection check: every test function of ``APPLIES`` must be collected exactly once per zoo name it applies to, and no
other function may reach a zoo name; otherwise collection stops with an error naming the difference. A timm upgrade
that renames a test, its ``model_name`` parameter or the tags cannot deselect a group in silence.

timm's size caps (``TARGET_*``/``MAX_*``) and exclusion lists apply unchanged. On top of them, ``SUBSET`` and
``SMALLEST``: exclusions of the kinds timm applies to its own models in its CI (``EXCLUDE_*`` lists: bigger models
left out for the runners' memory and time; tests that download weights not defined there), each with its reason.
"""

from __future__ import annotations

import fnmatch
import os

import pytest
import timm
import torch
from timm.models import split_model_name_tag

_BUILTIN = set(timm.list_models())
import mixerzoo  # noqa: E402, F401  (registers the zoo in timm)
from mixerzoo.training.data import usable_cpus  # noqa: E402

ZOO = sorted(set(timm.list_models()) - _BUILTIN)
ZOO_TAGGED = sorted(n for n in timm.list_models(include_tags=True) if split_model_name_tag(n)[0] in ZOO)
ZOO_WEIGHTS = sorted(n for n in timm.list_models(pretrained=True) if split_model_name_tag(n)[0] in ZOO)

# timm's generic tests, each with the zoo names it must be collected for. The config tests run on tagged names; the
# pretrained tests on the tagged names with weights; the last two groups exist only outside GitHub Actions (timm's
# own condition in test_models.py).
APPLIES: dict[str, list[str]] = {
    "test_model_forward": ZOO,
    "test_model_backward": ZOO,
    "test_model_default_cfgs": ZOO_TAGGED,
    "test_model_forward_torchscript": ZOO,
    "test_model_forward_features": ZOO,
    "test_model_forward_intermediates_features": ZOO,
    "test_model_forward_intermediates": ZOO,
    "test_prune_intermediate_layers_contract": ZOO,
    "test_model_forward_fx": ZOO,
    "test_model_backward_fx": ZOO,
}
if "GITHUB_ACTIONS" not in os.environ:
    APPLIES |= {
        "test_model_load_pretrained": ZOO_WEIGHTS,
        "test_model_features_pretrained": ZOO_WEIGHTS,
        "test_model_forward_fx_torchscript": ZOO,
    }
# timm selects these by module (FEAT_INTER_FILTERS); the zoo's models are added to their model_name parameters
BY_MODULE = ("test_model_forward_intermediates", "test_model_forward_intermediates_features",
             "test_prune_intermediate_layers_contract")  # fmt: skip

# One member per family, its smallest: it runs every test. The family's other members share its code (they differ in
# depths and widths); they run the config tests (every name, on the meta device) and the forward test.
SMALLEST = ["identityformer_s12", "randformer_s12", "stripmlp_t_light", "affnet_et", "hydra_vit_s", "vim2_t"]
ALWAYS = ["test_model_default_cfgs", "test_model_forward"]

# (test-name pattern, model-name patterns, reason), first match wins: skipped there, reported with the reason
SUBSET = [
    (
        "test_model_*_pretrained",
        ["*"],
        "downloads the pretrained weights: timm's CI does not define these tests (GITHUB_ACTIONS) and CI here has no "
        "network; tests/models/test_checkpoint.py loads checkpoint files offline, official key layouts included",
    ),
    (
        "test_model_forward",
        ["vim2_s", "vim2_b", "hydra_vit_b", "*_m48", "stripmlp_b"],
        "memory and time, as timm's EXCLUDE_FILTERS leave its bigger models out on CI runners: a grad-enabled "
        "forward at 224 of the largest members (vim2_s/b peak at 6.1/7.9 GB)",
    ),
]
TIME_REASON = (
    "time on the CI machine's 2 CPU cores, as timm's EXCLUDE_FILTERS leave bigger models out on CI runners: the "
    "heavy checks run on the family's smallest member, which shares this model's code"
)


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:  # an equal share of the cores per xdist worker: OpenMP threads spinning against each other took
        torch.set_num_threads(max(1, usable_cpus() // workers))  # 1.8x the wall time on 2 cores (3.5 vs 2.0 minutes)
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's marker (not installed here)")
    missing = sorted(set(SMALLEST) - set(ZOO))
    if not ZOO or missing:
        raise pytest.UsageError(f"timm_zoo_plugin: the zoo registers {ZOO}; SMALLEST names unknown ones {missing}.")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Add the zoo's names to the ``model_name`` parameters of the tests timm selects by module (``BY_MODULE``),
    before pytest turns the marks into calls, with the test module's ``EXCLUDE_FILTERS`` applied."""
    if metafunc.definition.originalname not in BY_MODULE:
        return
    markers = metafunc.definition.own_markers
    for i, mark in enumerate(markers):
        if mark.name == "parametrize" and mark.args and mark.args[0] == "model_name":
            excluded = getattr(metafunc.module, "EXCLUDE_FILTERS", [])
            zoo = [n for n in ZOO if not any(fnmatch.fnmatch(n, f) for f in excluded)]
            markers[i] = pytest.mark.parametrize("model_name", [*mark.args[1], *zoo], **mark.kwargs).mark


def _model_name(item: pytest.Item) -> str | None:
    """The model an item runs (its ``model_name`` parameter without the pretrained tag), or None."""
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("model_name") if callspec is not None else None
    return split_model_name_tag(name)[0] if isinstance(name, str) else None


def selection_errors(items: list[pytest.Item]) -> list[str]:
    """How the zoo items differ from ``APPLIES``: per test function, the number collected against the number of zoo
    names it applies to, and functions that reach a zoo name without being listed."""
    collected: dict[str, int] = {}
    for item in items:
        collected[item.originalname] = collected.get(item.originalname, 0) + 1
    errors = [
        f"{test}: {collected.get(test, 0)} zoo cases collected, expected {len(names)}"
        for test, names in APPLIES.items()
        if collected.get(test, 0) != len(names)
    ]
    unexpected = [test for test in collected if test not in APPLIES]
    errors += [f"{test}: {collected[test]} zoo cases collected, not in APPLIES" for test in unexpected]
    return errors


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        (kept if _model_name(item) in ZOO else dropped).append(item)
    errors = selection_errors(kept)
    if errors:
        raise pytest.UsageError(
            "timm_zoo_plugin: timm's model tests do not reach the zoo as expected (a timm upgrade renamed a test, its "
            "model_name parameter or the tags?):\n  " + "\n  ".join(errors)
        )
    for item in kept:
        name, test = _model_name(item), item.originalname
        for test_pattern, model_patterns, reason in SUBSET:
            if fnmatch.fnmatch(test, test_pattern) and any(fnmatch.fnmatch(name, p) for p in model_patterns):
                item.add_marker(pytest.mark.skip(reason=f"zoo subset: {reason}"))
                break
        else:
            if name not in SMALLEST and test not in ALWAYS:
                item.add_marker(pytest.mark.skip(reason=f"zoo subset: {TIME_REASON}"))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
