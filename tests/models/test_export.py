"""Compile- and export-clean models (issue 13 item 4), on the small builds of the contract suite (one block per
stage, narrow stages where the family allows, 64² input; grid-bound models are built for, and exported at, 64²).

One graph for torch.compile: ``torch._dynamo.explain`` finds no graph break. Sizes of a family built small have
the same module tree up to numbers (checked when this list was made, on the printed trees: identityformer_*,
randformer_*, poolformer_*, poolformerv2_* = metaformer_s12, convformer_*, caformer_*, vim2_*, hydra_vit_* share one
tree per family; affnet_* and stripmlp_* differ only in widths, and Strip-MLP also in its channel-patch count, which
no branch reads), so one member stands for its family. The members of ``test_contract.COMPILE`` (identityformer_s12,
randformer_s12, affnet_et, stripmlp_t_light, hydra_vit_s, vim2_t, caformer_s18, mamba_mixer_metaformer_s12) are
compiled there with ``fullgraph=True``; the builder configurations with other module trees are here (about 25 s:
tracing costs 1-5 s a model, so not every name).

Export: ``torch.export`` gives the eager output, and its ONNX export (opset 18) run by onnxruntime is within 1e-4
(relative, whole output) of eager, for one member of each kind of token mixer: the selective scan (vim2_t, an ONNX
``Scan`` over chunks), the FFT filter (affnet_et, ONNX ``DFT``), the strip MLPs at their grid (stripmlp_t_light),
pooling (poolformer_s12; ConvFormer/CAFormer add only convolutions and attention) and Hydra (hydra_vit_s, the dense
quasiseparable product). About 55 s in all; the other families use the same layers. The README's Export snippet
(run by tests/docs/test_snippets.py) exports a one-block hydra_vit_s, not one of these again.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.models.test_contract import SMALL_SIZE, _model, _x

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPLAIN = [
    ("config", "aff_metaformer_s12"),
    ("config", "convformer_s18"),
    ("config", "hydra_metaformer_s12"),
    ("config", "metaformer_s12"),
    ("config", "metaformer_tiny"),
    ("config", "poolformer_s12"),
    ("config", "strip_mlp_metaformer_s12"),
]
EXPORT = [
    ("timm", "vim2_t"),
    ("timm", "affnet_et"),
    ("timm", "stripmlp_t_light"),
    ("timm", "hydra_vit_s"),
    ("config", "poolformer_s12"),
]
# ONNX op types each export must contain: the scan stays a loop over chunks, the FFTs are DFTs
ONNX_OPS = {"vim2_t": {"Scan"}, "affnet_et": {"DFT"}}


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [f"{kind}:{name}" for kind, name in cases]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), EXPLAIN, ids=_ids(EXPLAIN))
def test_dynamo_traces_the_model_as_one_graph(kind: str, name: str) -> None:
    model = _model(kind, name).eval()
    torch._dynamo.reset()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explanation = torch._dynamo.explain(model)(_x((SMALL_SIZE, SMALL_SIZE), batch=1))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def _relative_error(out: np.ndarray, reference: torch.Tensor) -> float:
    return float(np.linalg.norm(out - reference.numpy()) / np.linalg.norm(reference.numpy()))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), EXPORT, ids=_ids(EXPORT))
def test_export_and_onnx_runtime_give_the_eager_output(kind: str, name: str) -> None:
    """Parameters frozen, as for inference: export then traces no backward (twice as fast for the scan's op)."""
    model = _model(kind, name).eval().requires_grad_(False)
    x = _x((SMALL_SIZE, SMALL_SIZE))
    with torch.no_grad():
        eager = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), eager, rtol=1e-5, atol=1e-5)
        program = torch.onnx.export(exported, dynamo=True, opset_version=18, optimize=False, verbose=False)
    proto = program.model_proto
    assert ONNX_OPS.get(name, set()) <= {node.op_type for node in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert _relative_error(out, eager) < 1e-4
