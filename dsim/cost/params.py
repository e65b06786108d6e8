"""Parameter counts that equal the real model's, tensor by tensor.

Every number here is the element count of a tensor that `dsim.model` creates, under the module
name the model gives it (`attn.wq_a`, `ffn.shared_experts`, ...). `params(args).total` is therefore
exactly `sum(p.numel() for p in Transformer(args).parameters())`, and the tests hold it to that on
every preset.

Conventions (papers differ, so each is a separate field):
    total                all unique parameters of `Transformer(args)`: main model + MTP modules;
                         a tied head is counted once (it is the embedding).
    total_no_mtp         the main model only. DeepSeek-V3's "671B" is this number.
    total_no_embedding   total minus the input embedding table.
    active               parameters one token touches in a forward pass of the main model: all
                         shared weights (embedding table and head included) and top-k of the
                         routed experts. Mixtral's 12.9B and DeepSeekMoE's 2.8B use this.
    active_no_embedding  active minus the input embedding table (a lookup, no arithmetic).
                         DeepSeek-V2/V3's 21B/37B use this; it is also the N of "6 N D".
    mtp                  unique parameters of the MTP modules (they share embedding and head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsim.config import ModelArgs
from dsim.cost.components import Component
from dsim.cost.graph import is_moe_layer, mtp_layer_id  # noqa: F401  (the model's layer rules)

# The components that hold parameters, in display order. ATTN_PROJ holds every weight of the
# attention modules, their q_norm and kv_norm included; NORMS the blocks' and the final norms.
COMPONENTS = (
    Component.EMBEDDING,
    Component.ATTN_PROJ,
    Component.DENSE_FFN,
    Component.SHARED_EXPERTS,
    Component.ROUTED_EXPERTS,
    Component.GATE,
    Component.NORMS,
    Component.HEAD,
    Component.MTP,
)


# ---------------------------------------------------------------------------------------------
# One function per module: weight name -> element count, as the model names them.
# ---------------------------------------------------------------------------------------------
# ANCHOR: attention_params
def attention_params(args: ModelArgs) -> dict[str, int]:
    """Weights of one attention module (`MLA` or `GQA`), keyed by the model's attribute names.

    MLA: the query is low rank (wq_a: D x q_lora_rank, q_norm, wq_b) or full (wq); keys and values
    share the latent wkv_a: D x (kv_lora_rank + qk_rope_head_dim), kv_norm, and its up-projection
    wkv_b: kv_lora_rank x H (qk_nope_head_dim + v_head_dim); wo: H v_head_dim x D.
    GQA/MHA: wq: D x H head_size, wk and wv: D x kv_heads head_size, wo: H head_size x D, and
    the other families' options: q/k/v and o biases, qk-norm weights, per-head attention sinks.
    MLA with DeepSeek-V3.2's indexer adds its weights under "indexer.".
    """
    D, H = args.dim, args.n_heads
    if args.attn_type == "mla":
        p: dict[str, int] = {}
        if args.q_lora_rank > 0:
            p["wq_a"] = D * args.q_lora_rank
            p["q_norm"] = args.q_lora_rank
            p["wq_b"] = args.q_lora_rank * H * args.qk_head_dim
        else:
            p["wq"] = D * H * args.qk_head_dim
        p["wkv_a"] = D * (args.kv_lora_rank + args.qk_rope_head_dim)
        p["kv_norm"] = args.kv_lora_rank
        p["wkv_b"] = args.kv_lora_rank * H * (args.qk_nope_head_dim + args.v_head_dim)
        p["wo"] = H * args.v_head_dim * D
        p.update({f"indexer.{k}": v for k, v in indexer_params(args).items()})
        return p
    hd, kv = args.head_size, args.kv_heads
    qkv_bias = 1 if args.qkv_bias else 0  # Qwen2-MoE, GLM-4.5, gpt-oss (a bias per output)
    p = {
        "wq": (D + qkv_bias) * H * hd,
        "wk": (D + qkv_bias) * kv * hd,
        "wv": (D + qkv_bias) * kv * hd,
        "wo": H * hd * D + (D if args.o_bias else 0),  # gpt-oss's o bias
    }
    if args.qk_norm != "none":  # per head (Qwen3, GLM-4.5) or over the projection (OLMoE)
        per_head = args.qk_norm == "head"
        p["q_norm"] = hd if per_head else H * hd
        p["k_norm"] = hd if per_head else kv * hd
    if args.attn_sink:  # gpt-oss: one logit per head
        p["sink"] = H
    return p
    # ANCHOR_END: attention_params


def indexer_params(args: ModelArgs) -> dict[str, int]:
    """DeepSeek-V3.2's lightning indexer: wq_b (q_lora_rank -> index_n_heads index_head_dim), wk
    (D -> index_head_dim), k_norm (a LayerNorm with weight and bias) and weights_proj (D ->
    index_n_heads); empty for dense attention."""
    if not args.has_indexer:
        return {}
    Hi, Di, D = args.index_n_heads, args.index_head_dim, args.dim
    return {
        "wq_b": args.q_lora_rank * Hi * Di,
        "wk": D * Di,
        "k_norm": 2 * Di,
        "weights_proj": D * Hi,
    }


def mlp_params(dim: int, inter_dim: int) -> dict[str, int]:
    """A SwiGLU MLP (dense FFN or the shared experts): w1, w3: D x inter, w2: inter x D."""
    return {"w1": dim * inter_dim, "w2": inter_dim * dim, "w3": dim * inter_dim}


def expert_params(args: ModelArgs) -> int:
    """One routed expert: w1[e], w3[e]: moe_inter_dim x D and w2[e]: D x moe_inter_dim, and with
    expert_bias (gpt-oss) b1[e], b3[e]: moe_inter_dim and b2[e]: D."""
    bias = 2 * args.moe_inter_dim + args.dim if args.expert_bias else 0
    return 3 * args.dim * args.moe_inter_dim + bias


def moe_params(args: ModelArgs) -> dict[str, int]:
    """One MoE FFN: the gate (E x D), E stacked routed experts, the fused shared experts."""
    E = args.n_routed_experts
    p = {"gate": E * args.dim + (E if args.router_bias else 0), "experts": E * expert_params(args)}
    if args.n_shared_experts:
        p["shared_experts"] = sum(
            mlp_params(args.dim, args.n_shared_experts * args.moe_inter_dim).values()
        )
    if args.shared_expert_gate:  # Qwen2-MoE: sigmoid(x w) scales the shared output, w: [1, D]
        p["shared_gate"] = args.dim
    return p


def block_params(args: ModelArgs, layer_id: int) -> dict[str, int]:
    """One transformer block, keyed by dotted module names relative to the block
    ("attn.wo", ...)."""
    p = {f"attn.{k}": v for k, v in attention_params(args).items()}
    ffn = moe_params(args) if is_moe_layer(args, layer_id) else mlp_params(args.dim, args.inter_dim)
    p.update({f"ffn.{k}": v for k, v in ffn.items()})
    p["attn_norm"] = p["ffn_norm"] = args.dim
    return p


def mtp_module_params(args: ModelArgs) -> dict[str, int]:
    """One MTP depth: enorm, hnorm, eh_proj (2D -> D), a full block, its own final norm."""
    p = {"enorm": args.dim, "hnorm": args.dim, "eh_proj": 2 * args.dim * args.dim, "norm": args.dim}
    p.update({f"block.{k}": v for k, v in block_params(args, mtp_layer_id(args)).items()})
    return p


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------
def _component(name: str, layer_id: int, args: ModelArgs) -> Component:
    """Which breakdown component a block weight belongs to."""
    if name.startswith("attn."):
        return Component.ATTN_PROJ
    if name in ("attn_norm", "ffn_norm"):
        return Component.NORMS
    if not is_moe_layer(args, layer_id):
        return Component.DENSE_FFN
    return {
        "ffn.gate": Component.GATE,
        "ffn.experts": Component.ROUTED_EXPERTS,
        "ffn.shared_experts": Component.SHARED_EXPERTS,
        "ffn.shared_gate": Component.SHARED_EXPERTS,
    }[name]


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a model: the breakdown by component, total and activated per token."""

    args: ModelArgs
    breakdown: dict[Component, int]  # component -> parameters (see COMPONENTS)
    active_breakdown: dict[
        Component, int
    ]  # component -> parameters one token uses (routed: top-k of E)
    modules: dict[str, int] = field(
        repr=False
    )  # dotted module name -> parameters, like named_parameters

    @property
    def total(self) -> int:
        """Every unique parameter, MTP included: equals
        sum(p.numel() for p in model.parameters())."""
        return sum(self.breakdown.values())

    @property
    def total_no_mtp(self) -> int:
        return self.total - self.breakdown["mtp"]

    @property
    def total_no_embedding(self) -> int:
        return self.total - self.breakdown["embedding"]

    @property
    def mtp(self) -> int:
        return self.breakdown["mtp"]

    @property
    def active(self) -> int:
        """Parameters one token touches in the main model (embedding table and head included)."""
        return sum(v for k, v in self.active_breakdown.items() if k != "mtp")

    @property
    def active_no_embedding(self) -> int:
        """`active` without the input embedding table: the N of 6ND (the lookup does no FLOPs)."""
        return self.active - self.active_breakdown["embedding"]

    @property
    def active_mtp(self) -> int:
        """Parameters one token touches in the MTP modules (their top-k experts; embedding and head
        shared)."""
        return self.active_breakdown["mtp"]

    def table(self, unit: float = 1e9) -> str:
        """The breakdown as aligned text, in units of `unit` (billions by default)."""
        rows = [f"{'component':16s} {'total':>10s} {'active':>10s}"]
        for k in COMPONENTS:
            rows.append(
                f"{k:16s} {self.breakdown[k] / unit:10.3f} {self.active_breakdown[k] / unit:10.3f}"
            )
        active = sum(self.active_breakdown.values())
        rows.append(f"{'sum':16s} {self.total / unit:10.3f} {active / unit:10.3f}")
        return "\n".join(rows)


def params(args: ModelArgs) -> ParamCount:
    """Count the parameters of `Transformer(args)` by component, total and activated per token.

    Routed experts contribute n_activated_experts / n_routed_experts of their weights to `active`;
    everything else a token passes through counts fully. See the module docstring for conventions.
    """
    if not isinstance(args, ModelArgs):
        raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
    D, V = args.dim, args.vocab_size
    total = dict.fromkeys(COMPONENTS, 0)
    active = dict.fromkeys(COMPONENTS, 0)
    modules: dict[str, int] = {"embed": V * D}
    total["embedding"] = active["embedding"] = V * D
    for i in range(args.n_layers):
        for name, n in block_params(args, i).items():
            comp = _component(name, i, args)
            total[comp] += n
            active[comp] += (
                n if comp != "routed_experts" else args.n_activated_experts * expert_params(args)
            )
            modules[f"layers.{i}.{name}"] = n
    total["norms"] += D
    active["norms"] += D
    modules["norm"] = D
    if not args.tie_embeddings:  # a tied head is the embedding: one tensor, counted once
        total["head"] = active["head"] = V * D
        modules["head"] = V * D
    for d in range(args.n_mtp_layers):
        for name, n in mtp_module_params(args).items():
            total["mtp"] += n
            routed = name == "block.ffn.experts"
            active["mtp"] += args.n_activated_experts * expert_params(args) if routed else n
            modules[f"mtp.{d}.{name}"] = n
    return ParamCount(args=args, breakdown=total, active_breakdown=active, modules=modules)
