"""Model arguments and presets.

One dataclass, `ModelArgs`, describes every model dsim builds or costs. Its field names follow
deepseek-ai/DeepSeek-V3 `inference/model.py` so that a reader can hold dsim against the reference:
`dim`, `inter_dim`, `moe_inter_dim`, `n_routed_experts`, `kv_lora_rank`, ... The real model
(`dsim.model`) and the cost models (`dsim.cost`) read the same fields.

Beyond DeepSeek's fields there are a few that a comparison needs: the attention type (`mla`,
`mha`, `gqa`), the depth of multi-token prediction, tied embeddings, and the choices DeepSeek-V2 and
Mixtral make differently from V3 (how a group of experts is scored, whether top-k weights are
renormalised).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dsim.config_checks import validate_core, validate_family_fields


@dataclass
class ModelArgs:
    """Hyper-parameters of a decoder-only MoE transformer (DeepSeek's names).

    Sizes:
        vocab_size: tokens in the vocabulary.
        dim: model (hidden) width.
        inter_dim: hidden width of the dense SwiGLU FFN (the first `n_dense_layers` layers).
        moe_inter_dim: hidden width of one routed (and one shared) expert.
        n_layers: transformer blocks; the first `n_dense_layers` use a dense FFN, the rest MoE.
        n_heads: attention (query) heads.
    MoE:
        n_routed_experts, n_shared_experts, n_activated_experts (top-k).
        n_expert_groups, n_limited_groups: group-limited routing (a token may only pick experts
            in its `n_limited_groups` best groups out of `n_expert_groups`).
        score_func: "softmax" (DeepSeek-V2, DeepSeekMoE, Mixtral) or "sigmoid" (DeepSeek-V3).
        route_scale: multiplies the combine weights (V3: 2.5, V2: 16).
        route_norm: renormalise the top-k weights to sum to one (V3 and Mixtral yes, V2 no).
            None means DeepSeek's rule: renormalise exactly when score_func is "sigmoid".
        group_score: how a group is scored: "top2_sum" (V3: sum of its two best scores) or
            "max" (V2's group-limited greedy).
        capacity_factor: 0 disables token dropping (DeepSeek-V3's default); otherwise each expert
            takes at most ceil(capacity_factor * tokens * top_k / n_routed_experts) tokens.
        drop_policy: which tokens an over-full expert drops: "score" (lowest score) or
            "position" (latest in the batch).
    Attention:
        attn_type: "mla" (multi-head latent attention), "mha" or "gqa".
        q_lora_rank: 0 means a full-rank query projection (V2-Lite); >0 the low-rank query.
        kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA sizes.
        head_dim, n_kv_heads: MHA/GQA sizes (head_dim 0 means dim // n_heads; n_kv_heads 0 means
            n_heads, i.e. MHA).
        attn_impl: MLA computed "naive" (decompress K and V, cache them per head) or "absorb"
            (fold W_UK into the query and W_UV after attention; cache only the latent + RoPE key).
    RoPE / YaRN:
        max_seq_len, original_seq_len, rope_theta, rope_factor, beta_fast, beta_slow, mscale:
            YaRN is applied when max_seq_len > original_seq_len, as in DeepSeek's reference.
    Other:
        n_mtp_layers: depth D of multi-token prediction modules (V3: 1).
        tie_embeddings: share the input embedding and the output head.
        norm_eps: RMSNorm epsilon.
        expert_impl: "grouped" (sorted tokens, grouped GEMM) or "loop" (one expert at a time).
        max_batch_size: batch rows the KV cache is allocated for.
    Other families (Qwen2/3-MoE, OLMoE, DBRX, gpt-oss, GLM-4.5, DeepSeek-V3.2, Llama, Mistral);
    each default reproduces the DeepSeek/Mixtral behaviour above:
        qkv_bias: biases on the query, key and value projections (Qwen2-MoE, GLM-4.5, gpt-oss).
        o_bias: a bias on the attention output projection (gpt-oss; Llama's attention_bias).
        qk_norm: RMSNorm of queries and keys before RoPE: "none", "head" (per head over head_dim,
            Qwen3, GLM-4.5) or "proj" (over the whole projection n_heads * head_dim, OLMoE).
            MHA/GQA only.
        rotary_dim: MHA/GQA partial rotary: RoPE rotates the first rotary_dim dims of each
            head (GLM-4.5: head_dim / 2); 0 means the whole head. MLA uses qk_rope_head_dim.
        clip_qkv: clamp the query, key and value projections to [-clip_qkv, clip_qkv] (DBRX);
            0 disables. MHA/GQA only.
        attn_sink: one learned logit per head that joins every softmax and takes probability mass
            but carries no value (gpt-oss's attention sinks). MHA/GQA only.
        sliding_window: tokens a query sees (itself included) in the layers of `window_layers`
            (Mistral: every layer; gpt-oss: every other layer); 0 means full attention.
        window_layers: indices of the layers that use the sliding window (sorted, distinct);
            empty exactly when sliding_window is 0. MTP blocks always attend fully.
        rope_truncate: YaRN rounds its ramp bounds to whole dims (DeepSeek; gpt-oss: False).
        rope_scaling: how RoPE reaches past original_seq_len: "yarn" (DeepSeek, gpt-oss; applied
            when max_seq_len > original_seq_len) or "llama3" (Llama 3.1: frequencies whose
            wavelength exceeds original_seq_len / low_freq_factor are divided by rope_factor,
            those under original_seq_len / high_freq_factor kept, a ramp between; always applied).
        low_freq_factor, high_freq_factor: the llama3 scaling's two wavelength bounds.
        norm_type: "rmsnorm", or "layernorm" (mean-centred, weight only, no bias: DBRX).
        shared_expert_gate: the shared experts' output is scaled by sigmoid(x w), w: [dim]
            (Qwen2-MoE's gated shared expert).
        router_bias: a learned bias on the router logits (gpt-oss; enters the weights).
        expert_bias: biases on the routed experts' projections (gpt-oss).
        swiglu_limit: 0 for SwiGLU; > 0 selects gpt-oss's clamped variant in the routed experts:
            gate clamped to <= limit, up to [-limit, limit], out = (up + 1) * gate *
            sigmoid(1.702 * gate).
        index_n_heads, index_head_dim, index_topk: DeepSeek-V3.2's sparse attention: an indexer
            of that many heads and width scores the earlier tokens, MLA attends to the
            index_topk best only. All 0: dense MLA.
    """

    # sizes
    vocab_size: int = 256
    dim: int = 64
    inter_dim: int = 192
    moe_inter_dim: int = 32
    n_layers: int = 2
    n_dense_layers: int = 1
    n_heads: int = 4
    # moe
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    route_scale: float = 1.0
    route_norm: bool | None = None
    group_score: Literal["top2_sum", "max"] = "top2_sum"
    capacity_factor: float = 0.0
    drop_policy: Literal["score", "position"] = "score"
    # attention
    attn_type: Literal["mla", "mha", "gqa"] = "mla"
    q_lora_rank: int = 0
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    head_dim: int = 0
    n_kv_heads: int = 0
    attn_impl: Literal["naive", "absorb"] = "naive"
    # rope / yarn
    max_seq_len: int = 256
    original_seq_len: int = 4096
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0
    # other
    n_mtp_layers: int = 0
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    expert_impl: Literal["grouped", "loop"] = "grouped"
    max_batch_size: int = 8
    # other families (defaults: DeepSeek/Mixtral behaviour)
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: Literal["none", "head", "proj"] = "none"
    rotary_dim: int = 0
    clip_qkv: float = 0.0
    attn_sink: bool = False
    sliding_window: int = 0
    window_layers: tuple[int, ...] = ()
    rope_truncate: bool = True
    rope_scaling: Literal["yarn", "llama3"] = "yarn"
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    norm_type: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    shared_expert_gate: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    swiglu_limit: float = 0.0
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.window_layers, list):  # as read back from JSON
            self.window_layers = tuple(self.window_layers)
        self.validate()
        object.__setattr__(self, "_validated", True)  # from now on, every assignment validates

    def __setattr__(self, name: str, value: Any) -> None:
        """Validate a field changed after construction, too: `args.dim = 0` raises ValueError and
        leaves args as it was. (__init__ assigns before __post_init__ validates the whole.)"""
        if not self.__dict__.get("_validated"):
            return object.__setattr__(self, name, value)
        missing = object()
        old = self.__dict__.get(name, missing)
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except ValueError:
            if old is missing:
                object.__delattr__(self, name)
            else:
                object.__setattr__(self, name, old)
            raise

    # ---- derived quantities (one place, used by the model and the cost models alike) ----
    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0 and self.n_layers > self.n_dense_layers

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.n_routed_experts > 0 else 0

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: for MLA the no-RoPE part plus the decoupled RoPE part."""
        return (
            self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.attn_type == "mla"
            else self.head_size
        )

    @property
    def head_size(self) -> int:
        """Per-head width of MHA/GQA (`head_dim`, or dim // n_heads when 0)."""
        return self.head_dim or self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of MHA/GQA (n_heads for MHA)."""
        return self.n_kv_heads or self.n_heads

    @property
    def rope_dim(self) -> int:
        """Dimensions that RoPE rotates: MLA's decoupled key, else rotary_dim or the whole head."""
        if self.attn_type == "mla":
            return self.qk_rope_head_dim
        return self.rotary_dim or self.head_size

    @property
    def has_indexer(self) -> bool:
        """Whether MLA is DeepSeek-V3.2's sparse attention (an indexer picks index_topk keys)."""
        return self.index_topk > 0

    @property
    def renormalize(self) -> bool:
        """Whether top-k weights are renormalised (DeepSeek's rule when route_norm is None)."""
        return self.score_func == "sigmoid" if self.route_norm is None else self.route_norm

    @property
    def uses_yarn(self) -> bool:
        return self.rope_scaling == "yarn" and self.max_seq_len > self.original_seq_len

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times YaRN's mscale^2 when the context is extended (DeepSeek's rule)."""
        scale = self.qk_head_dim**-0.5
        if self.uses_yarn:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale *= m * m
        return scale

    def replace(self, **changes: Any) -> ModelArgs:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def first_layers(self, n_layers: int, **changes: Any) -> ModelArgs:
        """The model cut to its first n_layers blocks (a part of a step to cost or measure): the
        dense layers and the sliding-window layers among them stay as they were."""
        window = tuple(i for i in self.window_layers if i < n_layers)
        return self.replace(
            n_layers=n_layers,
            n_dense_layers=min(self.n_dense_layers, n_layers),
            window_layers=window,
            sliding_window=self.sliding_window if window else 0,
            **changes,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation ----
    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed range for any invalid value."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"ModelArgs.{name} = {getattr(self, name)!r} is invalid: must be {allowed}"
                )

        validate_core(self, need)  # dsim.config_checks: DeepSeek's and Mixtral's fields
        validate_family_fields(self, need)  # the other families' fields

    # ---- Hugging Face configs ----
    @classmethod
    def from_hf_config(
        cls, path_or_dict: str | Path | dict[str, Any], **overrides: Any
    ) -> ModelArgs:
        """Read a Hugging Face `config.json` (dsim.hf.supported_families()) or DeepSeek's native
        config: a path to the file or its directory, or the parsed dict; overrides come after.
        The parsing lives in dsim.hf.config, imported here: it imports dsim.config (no cycle)."""
        from dsim.hf.config import args_from_hf_config

        return args_from_hf_config(path_or_dict, **overrides)


# ---------------------------------------------------------------------------------------------
# Presets. Values come from the published Hugging Face configs and papers (sources per preset).
# ---------------------------------------------------------------------------------------------
_PRESETS: dict[str, dict[str, Any]] = {
    # A model that trains on a CPU in seconds: byte vocabulary, 2 layers (1 dense, 1 MoE).
    "tiny": dict(
        vocab_size=256,
        dim=64,
        inter_dim=192,
        moe_inter_dim=32,
        n_layers=2,
        n_dense_layers=1,
        n_heads=4,
        n_routed_experts=8,
        n_shared_experts=1,
        n_activated_experts=2,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_seq_len=256,
        original_seq_len=256,
    ),
    # deepseek-ai/DeepSeek-V3 config.json and inference/configs/config_671B.json; arXiv:2412.19437.
    "deepseek-v3": dict(
        vocab_size=129280,
        dim=7168,
        inter_dim=18432,
        moe_inter_dim=2048,
        n_layers=61,
        n_dense_layers=3,
        n_heads=128,
        n_routed_experts=256,
        n_shared_experts=1,
        n_activated_experts=8,
        n_expert_groups=8,
        n_limited_groups=4,
        score_func="sigmoid",
        route_norm=True,
        route_scale=2.5,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        max_seq_len=163840,
        original_seq_len=4096,
        rope_theta=10000.0,
        rope_factor=40,
        beta_fast=32,
        beta_slow=1,
        mscale=1.0,
        n_mtp_layers=1,
    ),
    # deepseek-ai/DeepSeek-V2 config.json; arXiv:2405.04434 (topk_method group_limited_greedy).
    "deepseek-v2": dict(
        vocab_size=102400,
        dim=5120,
        inter_dim=12288,
        moe_inter_dim=1536,
        n_layers=60,
        n_dense_layers=1,
        n_heads=128,
        n_routed_experts=160,
        n_shared_experts=2,
        n_activated_experts=6,
        n_expert_groups=8,
        n_limited_groups=3,
        score_func="softmax",
        route_scale=16.0,
        route_norm=False,
        group_score="max",
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        max_seq_len=163840,
        original_seq_len=4096,
        rope_factor=40,
        mscale=0.707,
    ),
    # deepseek-ai/DeepSeek-V2-Lite config.json (no query compression, no group limit).
    "deepseek-v2-lite": dict(
        vocab_size=102400,
        dim=2048,
        inter_dim=10944,
        moe_inter_dim=1408,
        n_layers=27,
        n_dense_layers=1,
        n_heads=16,
        n_routed_experts=64,
        n_shared_experts=2,
        n_activated_experts=6,
        score_func="softmax",
        route_scale=1.0,
        route_norm=False,
        q_lora_rank=0,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        max_seq_len=163840,
        original_seq_len=4096,
        rope_factor=40,
        mscale=0.707,
    ),
    # deepseek-ai/deepseek-moe-16b-base config.json; arXiv:2401.06066 (MHA, 4k context).
    "deepseekmoe-16b": dict(
        vocab_size=102400,
        dim=2048,
        inter_dim=10944,
        moe_inter_dim=1408,
        n_layers=28,
        n_dense_layers=1,
        n_heads=16,
        n_routed_experts=64,
        n_shared_experts=2,
        n_activated_experts=6,
        score_func="softmax",
        route_norm=False,
        attn_type="mha",
        head_dim=128,
        max_seq_len=4096,
        original_seq_len=4096,
        rope_theta=10000.0,
    ),
    # mistralai/Mixtral-8x7B-v0.1 config.json; arXiv:2401.04088 (GQA 32/8, every layer MoE).
    "mixtral-8x7b": dict(
        vocab_size=32000,
        dim=4096,
        inter_dim=0,
        moe_inter_dim=14336,
        n_layers=32,
        n_dense_layers=0,
        n_heads=32,
        n_routed_experts=8,
        n_shared_experts=0,
        n_activated_experts=2,
        score_func="softmax",
        route_norm=True,
        attn_type="gqa",
        head_dim=128,
        n_kv_heads=8,
        max_seq_len=32768,
        original_seq_len=32768,
        rope_theta=1e6,
        norm_eps=1e-5,
    ),
}

# Published totals, for the tour and the tests: (total, activated) parameters and the source.
PUBLISHED_PARAMS: dict[str, tuple[float, float, str]] = {
    "deepseek-v3": (671e9, 37e9, "DeepSeek-V3 technical report, abstract"),
    "deepseek-v2": (236e9, 21e9, "DeepSeek-V2 paper, abstract"),
    "deepseek-v2-lite": (15.7e9, 2.4e9, "DeepSeek-V2 paper, appendix B (V2-Lite)"),
    "deepseekmoe-16b": (16.4e9, 2.8e9, "DeepSeekMoE paper, section 5"),
    "mixtral-8x7b": (46.7e9, 12.9e9, "Mixtral of Experts paper, section 2"),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def preset(name: str, **overrides: Any) -> ModelArgs:
    """The named preset (see `preset_names()`), optionally with some fields overridden."""
    key = name.lower().strip()
    if key not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(_PRESETS)}")
    return ModelArgs(**{**_PRESETS[key], "name": key, **overrides})


def scaled_down(args: ModelArgs, **overrides: Any) -> ModelArgs:
    """A copy of `args` with the same structure and small sizes, buildable on a CPU in milliseconds.

    Keeps the attention type, routing rules, shared/routed/dense layout, group limits and MTP depth;
    shrinks widths, expert counts and layer counts. Used to hold the cost models to the real model.
    """
    groups = min(args.n_expert_groups, 4)
    per_group = 2 if args.n_routed_experts else 0
    routed = groups * max(per_group, 2) if args.n_routed_experts else 0
    topk = (
        min(args.n_activated_experts, routed, max(1, min(args.n_limited_groups, groups) * 2))
        if routed
        else 0
    )
    small = dict(
        vocab_size=97,
        dim=32,
        inter_dim=48 if args.inter_dim else 0,
        moe_inter_dim=16 if routed else 0,
        n_layers=min(args.n_layers, args.n_dense_layers + 2) if routed else min(args.n_layers, 2),
        n_dense_layers=min(args.n_dense_layers, 1),
        n_heads=4,
        n_routed_experts=routed,
        n_shared_experts=min(args.n_shared_experts, 2),
        n_activated_experts=topk,
        n_expert_groups=groups if routed else 1,
        n_limited_groups=min(args.n_limited_groups, groups) if routed else 1,
        q_lora_rank=12 if args.q_lora_rank else 0,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        head_dim=8 if args.attn_type != "mla" else 0,
        n_kv_heads=(2 if args.attn_type == "gqa" else 0),
        max_seq_len=64,
        original_seq_len=64 if not args.uses_yarn else 32,
        name=f"{args.name}-small",
    )
    if small["n_dense_layers"] == 0 and args.n_dense_layers == 0:
        small["n_layers"] = min(args.n_layers, 2)
    if not routed:  # a dense model (Llama, Mistral) stays dense
        small["n_dense_layers"] = small["n_layers"]
    # the other families' features, kept on and shrunk to the small head and layer counts
    small["rotary_dim"] = 4 if args.rotary_dim else 0
    if args.sliding_window:
        kept = tuple(i for i in args.window_layers if i < small["n_layers"])
        small.update(sliding_window=16, window_layers=kept or (0,))
    if args.index_topk:
        small.update(index_n_heads=2, index_head_dim=8, index_topk=16)
    return args.replace(**{**small, **overrides})
