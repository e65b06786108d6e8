"""ONNX export: onnxruntime's logits equal PyTorch's, MoE routing included (dsim.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dsim.config import preset  # noqa: E402
from dsim.export import ExportableLM, export_onnx, moe_gathered, onnx_logits  # noqa: E402
from dsim.model import Transformer  # noqa: E402

SEQ = 24


def _model(**changes) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset("tiny").replace(**changes)).eval()
    for moe in model.moe_layers():  # a non-zero balancing bias, so that it steers the choice
        moe.gate.bias.copy_(torch.randn_like(moe.gate.bias) * 0.05)
    return model


def _check(model: Transformer, path) -> None:
    gen = torch.Generator().manual_seed(1)
    for batch in (2, 5):  # 2 was traced; 5 checks the free batch dimension
        tokens = torch.randint(0, 256, (batch, SEQ), generator=gen)
        with torch.no_grad():
            ref = model(tokens).numpy()
        got = onnx_logits(path, tokens)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.99


@pytest.mark.parametrize(
    "changes",
    [
        {},  # tiny: softmax scores, top-2 of 8
        # DeepSeek-V3's routing: sigmoid scores, group-limited top-k, renormalised, scaled
        dict(score_func="sigmoid", n_expert_groups=4, n_limited_groups=2, route_scale=2.5),
    ],
    ids=["tiny", "v3-routing"],
)
def test_onnx_logits_equal_pytorch(tmp_path, changes):
    model = _model(**changes)
    path = export_onnx(model, tmp_path / "m.onnx", seq_len=SEQ, batch_size=2)
    _check(model, path)


def test_routing_is_in_the_graph_not_baked_in(tmp_path):
    """Two batches that choose different experts both match: the graph routes, it did not record
    the traced batch's choice (the trace ran on all-zero tokens)."""
    model = _model()
    path = export_onnx(model, tmp_path / "m.onnx", seq_len=SEQ, batch_size=1)
    chosen = []
    for seed in (3, 4):
        tokens = torch.randint(0, 256, (1, SEQ), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = model(tokens).numpy()
        chosen.append(model.moe_layers()[0].routing.indices.clone())
        np.testing.assert_allclose(onnx_logits(path, tokens), ref, rtol=1e-4, atol=1e-4)
    assert not torch.equal(chosen[0], chosen[1])
    # right-padding a shorter prompt leaves its own positions' logits unchanged (causal attention)
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([prompt, torch.zeros(1, SEQ - 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        ref = model(prompt).numpy()
    np.testing.assert_allclose(onnx_logits(path, padded)[:, :10], ref, rtol=1e-4, atol=1e-4)


def test_moe_gathered_equals_the_moe_layer():
    model = _model(score_func="sigmoid", n_expert_groups=2, n_limited_groups=1)
    moe = model.moe_layers()[0]
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        torch.testing.assert_close(moe_gathered(moe, x), moe(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            ExportableLM(model)(torch.arange(20)[None]),
            model(torch.arange(20)[None]),
            rtol=1e-5,
            atol=1e-5,
        )


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="capacity_factor"):
        ExportableLM(Transformer(preset("tiny").replace(capacity_factor=1.25)))
    with pytest.raises(ValueError, match="seq_len"):
        export_onnx(_model(), tmp_path / "m.onnx", seq_len=0)
    with pytest.raises(ValueError, match="seq_len"):
        export_onnx(_model(), tmp_path / "m.onnx", seq_len=10_000)
