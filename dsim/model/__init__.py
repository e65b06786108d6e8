"""A DeepSeek-style Mixture-of-Experts transformer, small enough to read in one sitting.

Modelled on deepseek-ai/DeepSeek-V3 `inference/model.py` (same module and weight names: `wq_a`,
`wkv_b`, `gate`, `shared_experts`, ...) and on karpathy/nanoGPT, without tensor parallelism or FP8
so that every line is about the architecture. It trains (forward and backward) on a CPU at the
`tiny` preset and runs real layer sizes on a GPU.

    Transformer
      embed                      token embedding                       [vocab, dim]
      layers[i]: Block
        attn_norm, attn          MLA (or MHA / GQA)
        ffn_norm,  ffn           MLP for the first n_dense_layers, MoE after
      norm, head                 final RMSNorm and output projection   [vocab, dim]
      mtp[d]: MTPModule          multi-token prediction, sharing embed and head

Shapes in comments: B batch, S sequence, T = B*S tokens, D dim, H heads, E routed experts,
K activated experts (top-k), I moe_inter_dim, V vocab.

The package is split by concept: `layers` (RMSNorm, RoPE/YaRN, masks, cache buffers), `attention`
(MLA, GQA), `moe` (MLP, gate, experts, MoE) and `transformer` (Block, MTPModule, Transformer).
Everything is re-exported here, so `from dsim.model import Transformer` is the one import path.
"""

from dsim.kernels import _grouped_mm_ok, _Permute, grouped_mm
from dsim.model.attention import GQA, MLA, Indexer, attention, rotate_leading
from dsim.model.layers import (
    LayerNorm,
    RMSNorm,
    apply_rotary_emb,
    cache_buffer,
    cache_update,
    causal_mask,
    make_norm,
    precompute_freqs_cis,
    ragged_causal_mask,
)
from dsim.model.moe import MLP, Experts, Gate, MoE, Routing, capacity_mask
from dsim.model.transformer import Block, MTPModule, Transformer

__all__ = [
    "Block",
    "Experts",
    "GQA",
    "Indexer",
    "LayerNorm",
    "Gate",
    "MLA",
    "MLP",
    "MTPModule",
    "MoE",
    "RMSNorm",
    "Routing",
    "Transformer",
    "_Permute",
    "_grouped_mm_ok",
    "apply_rotary_emb",
    "attention",
    "cache_buffer",
    "cache_update",
    "capacity_mask",
    "causal_mask",
    "grouped_mm",
    "make_norm",
    "precompute_freqs_cis",
    "ragged_causal_mask",
    "rotate_leading",
]
