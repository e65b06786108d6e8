"""ONNX export of dsim.model: the whole forward pass, MoE routing included, run by onnxruntime.

`torch.onnx.export(..., dynamo=True)` traces the model with torch.export and translates the graph
to ONNX. Three parts of `Transformer.forward` do not trace as they are, and `ExportableLM` runs the
same modules around them:

1. `Transformer.hidden` checks the token ids with `int(tokens.max())`: a value read back from the
   data, which a graph cannot hold. The export leaves the check out (onnxruntime's Gather fails on
   an out-of-range id instead).
2. The routed experts' grouped dispatch (`Experts.forward_grouped`, through `grouped_mm`) sizes its
   padded buffer by `int(counts.max())`, the busiest expert's token count: a data-dependent shape.
   The export computes every (token, chosen expert) pair by gathering the chosen experts' weights,
   w1[indices]: [T, K, I, D]. The gate (scores, bias, group limit, top-k, combine weights) is the
   model's own and runs inside the graph, so the routing is exported, not fixed. The gathered
   weights cost T*K*3*I*D numbers: nothing at the tiny preset, far too much at DeepSeek-V3's size
   (a serving export of a large MoE uses a custom grouped-GEMM operator instead).
3. The attention's `is_causal` flag is `seq_len > 1`, a Python bool: the sequence length is fixed
   when the model is exported (the batch size stays free). A shorter prompt can be right-padded to
   that length: the attention is causal, so the logits of its own positions do not change.

What is not exported at all, said plainly: decoding with the KV cache (the cache is a Python dict
that the attention fills in place), token dropping by a capacity limit (`capacity_factor > 0`:
`export_onnx` refuses it), the multi-token-prediction heads, and anything for training.
The complex-number RoPE (`torch.polar`, `view_as_complex`) exports as it is: the exporter rewrites
complex tensors as pairs of reals.

    path = export_onnx(model, "tiny.onnx", seq_len=64)
    logits = onnx_logits(path, tokens)        # numpy [B, 64, V], equal to model(tokens) to ~1e-5
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsim.model import MoE, Transformer
from dsim.offload import unsupported_expert_features


def moe_gathered(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer with each token's K experts applied through gathered weights (no
    data-dependent shapes): equal to `moe(x)` when no capacity limit drops tokens.

    x: [B, S, D] -> [B, S, D]
    """
    shape = x.shape
    x = x.reshape(-1, moe.args.dim)  # [T, D]
    routing = moe.gate(x)
    ex = moe.experts
    w1, w2, w3 = ex.w1[routing.indices], ex.w2[routing.indices], ex.w3[routing.indices]
    # w1, w3: [T, K, I, D]; w2: [T, K, D, I]
    h = F.silu(torch.einsum("td,tkid->tki", x, w1)) * torch.einsum("td,tkid->tki", x, w3)
    y = torch.einsum("tki,tkdi->tkd", h, w2)  # [T, K, D]
    y = (y * routing.weights.type_as(x).unsqueeze(-1)).sum(1)  # [T, D]
    if moe.shared_experts is not None:
        y = y + moe.shared_experts(x)
    return y.view(shape)


class ExportableLM(nn.Module):
    """`Transformer.forward(tokens)` (start_pos 0, no cache) in a form torch.export can trace.

    It holds the model, not a copy: the blocks' attention, norms, dense FFNs, gates, experts and the
    head are the model's own modules.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        if model.args.capacity_factor > 0:
            raise ValueError(
                f"ModelArgs.capacity_factor = {model.args.capacity_factor}: token dropping does "
                "not export (its per-expert ranks need data-dependent shapes); use 0"
            )
        for moe in model.moe_layers():
            if unsupported_expert_features(moe):
                raise ValueError(f"the export cannot run {unsupported_expert_features(moe)}")
        self.model = model
        # a buffer so that the exporter stores it as a constant of the graph
        self.register_buffer("freqs_cis", model.freqs_cis, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] int64 -> logits [B, S, V]."""
        m = self.model
        freqs_cis = self.freqs_cis[: tokens.shape[1]]
        h = m.embed(tokens)  # [B, S, D]
        for block in m.layers:  # Block.forward, with the MoE through moe_gathered
            h = h + block.attn(block.attn_norm(h), 0, freqs_cis)
            g = block.ffn_norm(h)
            h = h + (moe_gathered(block.ffn, g) if isinstance(block.ffn, MoE) else block.ffn(g))
        return m.head(m.norm(h))


def export_onnx(
    model: Transformer,
    path: str | Path,
    seq_len: int,
    batch_size: int = 1,
    dynamic_batch: bool = True,
) -> Path:
    """Export `model` (in eval mode, float32 on the CPU) to an ONNX file at `path`.

    seq_len: the fixed sequence length of the graph (1 <= seq_len <= ModelArgs.max_seq_len).
    batch_size: the example batch traced; with dynamic_batch the graph accepts any batch size.
    Returns the path. Input "tokens" [B, seq_len] int64, output "logits" [B, seq_len, V] float32.
    """
    if not (1 <= seq_len <= model.args.max_seq_len):
        raise ValueError(
            f"seq_len = {seq_len} must be in [1, ModelArgs.max_seq_len={model.args.max_seq_len}]"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size} must be >= 1")
    path = Path(path)
    was_training = model.training
    model.eval()
    wrapper = ExportableLM(model).eval()
    example = torch.zeros(batch_size, seq_len, dtype=torch.long)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    # The exporter prints its progress and warns about torchvision ops it cannot find: keep quiet.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            torch.no_grad(),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["tokens"],
                output_names=["logits"],
                dynamic_shapes=dynamic,
                dynamo=True,
                verbose=False,
            )
        program.save(str(path))
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return path


def onnx_logits(path: str | Path, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run an exported model with onnxruntime on the CPU: tokens [B, S] -> logits [B, S, V]."""
    import onnxruntime as ort  # optional dependency (the test extra)

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    return session.run(["logits"], {"tokens": ids.astype(np.int64)})[0]
