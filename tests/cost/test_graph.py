"""The op graph (dsim.cost.graph): one description of the model from which FLOPs, activation memory
and the time model's ops are read. Its ops carry checked components and the real module names, its
time view equals dsim.cost.timing's plans op for op, and its memory view adds up."""

import pytest
from torch import nn

from dsim.config import preset, preset_names, scaled_down
from dsim.cost import graph
from dsim.cost.components import Component
from dsim.cost.flops import flops
from dsim.cost.graph import GraphOp, block_graph, step_graph
from dsim.cost.memory import model_activation_bytes
from dsim.cost.params import is_moe_layer, mtp_layer_id
from dsim.cost.timing import PlanOp, block_plan, op_time, step_plan
from dsim.model import MoE, RMSNorm, Transformer

C = Component
MODES = [("train", None), ("prefill", None), ("prefill", 7), ("decode", None), ("decode", 33)]


def variants(args):
    """Structural variants of a preset that ModelArgs accepts: MLA naive and absorbed, with and
    without q-LoRA, MHA and GQA, with and without shared experts, all-dense, deeper MTP."""
    out = {"default": args}
    if args.attn_type == "mla":
        out["absorb"] = args.replace(attn_impl="absorb")
        out["naive"] = args.replace(attn_impl="naive")
        out["full-rank-q" if args.q_lora_rank else "low-rank-q"] = args.replace(
            q_lora_rank=0 if args.q_lora_rank else 12
        )
    out["gqa"] = args.replace(attn_type="gqa", head_dim=8, n_kv_heads=2)
    out["mha"] = args.replace(attn_type="mha", head_dim=8, n_kv_heads=0)
    if args.n_shared_experts:
        out["no-shared"] = args.replace(n_shared_experts=0)
    out["dense"] = args.replace(n_dense_layers=args.n_layers, inter_dim=args.inter_dim or 48)
    out["mtp-2"] = args.replace(n_mtp_layers=2)
    return out


def small_variants():
    return [
        (f"{name}/{v}", a)
        for name in preset_names()
        for v, a in variants(scaled_down(preset(name))).items()
    ]


def fields(plan):
    return [(p.component, p.label, p.op, p.shape, p.backward) for p in plan]


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------
def test_every_op_carries_a_component():
    for name in preset_names():
        for mode, context in MODES:
            for op in step_graph(preset(name), 2, 64, mode, context).ops:
                assert isinstance(op.component, Component), op
                assert all(isinstance(p.component, Component) for p in op.time), op
    with pytest.raises(ValueError, match="component must be a Component"):
        GraphOp("wq", "layers.0.attn.wq", "attn_proj")
    with pytest.raises(ValueError, match="component must be a Component"):
        GraphOp(
            "wq", "layers.0.attn.wq", C.ATTN_PROJ, time=(PlanOp("attention", "wq", "gemm", {}),)
        )


def expected_components(args):
    """The components a model has: the dense MLP only with dense layers, the router and experts
    only with MoE layers, shared experts only when it has them, MTP only with MTP modules."""
    out = {C.EMBEDDING, C.NORMS, C.ATTN_PROJ, C.ROPE, C.ATTN_CORE, C.RESIDUAL, C.HEAD}
    if args.n_dense_layers:
        out.add(C.DENSE_FFN)
    if args.is_moe:
        out |= {C.GATE, C.ROUTED_EXPERTS} | ({C.SHARED_EXPERTS} if args.n_shared_experts else set())
    if args.n_mtp_layers:
        out.add(C.MTP)
    return out


@pytest.mark.parametrize("name, args", small_variants())
def test_every_component_of_a_model_costs_something(name, args):
    """Training step: every component the model has gets FLOPs or time, and no other appears."""
    g = step_graph(args, 2, 32, "train")
    cost = dict.fromkeys(Component, 0.0)
    for comp, n in flops(args, 2, 32, "train").breakdown.items():
        cost[comp] += n
    for p in graph.plan(g.ops):
        cost[p.component] += op_time(p.op, "H100-SXM", "bf16", p.backward, **p.shape)
    assert {c for c, v in cost.items() if v > 0} == expected_components(args)
    assert {op.component for op in g.ops} == expected_components(args)


def test_deepseek_v3_has_every_component():
    assert expected_components(preset("deepseek-v3")) == set(Component)


# ---------------------------------------------------------------------------------------------
# Module names and the model's rules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, args",
    small_variants() + [("tied", scaled_down(preset("deepseek-v3"), tie_embeddings=True))],
)
def test_modules_are_the_models(name, args):
    """Every op names a module of Transformer(args), and every Linear and RMSNorm the forward calls
    has an op (MLA-absorbed multiplies wkv_b's weight in einsums: its matmuls belong to attn)."""
    modules = dict(Transformer(args).named_modules())
    for mode, context in MODES:
        ops = step_graph(args, 2, 12, mode, context).ops
        assert {op.module for op in ops} <= set(modules), mode
    named = {op.module for op in step_graph(args, 2, 12, "train").ops}
    called = {n for n, m in modules.items() if isinstance(m, (nn.Linear, RMSNorm))}
    if args.attn_type == "mla" and args.attn_impl == "absorb":
        called = {n for n in called if not n.endswith("attn.wkv_b")}
    assert called <= named
    norms = {
        op.module
        for op in step_graph(args, 2, 12, "train").ops
        if op.time and op.time[0].op == "rmsnorm"
    }
    assert norms == {n for n, m in modules.items() if isinstance(m, RMSNorm)}


@pytest.mark.parametrize("name", preset_names())
def test_layer_rules_are_the_models(name):
    args = scaled_down(preset(name), n_mtp_layers=1)
    model = Transformer(args)
    for i, layer in enumerate(model.layers):
        assert isinstance(layer.ffn, MoE) == graph.is_moe_layer(args, i)
    assert isinstance(model.mtp[0].block.ffn, MoE) == graph.is_moe_layer(
        args, graph.mtp_layer_id(args)
    )
    assert is_moe_layer is graph.is_moe_layer and mtp_layer_id is graph.mtp_layer_id  # re-exported
    # MTP depth k runs on seq_len - k positions; depths with none left do not run.
    assert graph.mtp_depths(args.replace(n_mtp_layers=3), 3) == [(1, 2), (2, 1)]


# ---------------------------------------------------------------------------------------------
# The time model's plans are the graph's time view (they were held equal to the hand-written
# plans op for op, on every preset and variant, before those were deleted)
# ---------------------------------------------------------------------------------------------
def test_the_time_model_reads_the_graph():
    assert step_plan is graph.step_plan and block_plan is graph.block_plan
    args = preset("deepseek-v3")
    plan = step_plan(args, 1, 64, "train")
    ops = graph.step_graph(args, 1, 64, "train").ops
    assert plan == [p for op in ops for p in op.time]


# ---------------------------------------------------------------------------------------------
# Bytes: matmuls read and write what their FLOPs say; the memory view adds up
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, args", small_variants())
def test_gemm_ops_agree_with_their_flops_and_bytes(name, args):
    """An op the time model runs as GEMMs has their 2 m n k (x batch) FLOPs; a Linear (one GEMM,
    batch 1) reads its input [m, k] and weight [k, n] and writes [m, n], in bf16."""
    linears = 0
    for mode, context in MODES:
        for op in step_graph(args, 2, 12, mode, context).ops:
            gemms = [p.shape for p in op.time if p.op == "gemm"]
            if not gemms or len(gemms) < len(op.time):
                continue
            assert op.flops.forward == sum(
                2 * s["m"] * s["n"] * s["k"] * s.get("batch", 1) for s in gemms
            )
            if len(gemms) == 1 and gemms[0].get("batch", 1) == 1:
                m, n, k = gemms[0]["m"], gemms[0]["n"], gemms[0]["k"]
                assert sorted(op.reads.values()) == sorted([2 * m * k, 2 * k * n]), op.name
                assert list(op.writes.values()) == [2 * m * n], op.name
                linears += 1
    assert linears >= 4 * args.n_layers * len(MODES)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("name", ["deepseek-v3", "mixtral-8x7b", "deepseek-v2-lite"])
def test_memory_view_is_the_graphs_kept_tensors(name, recompute):
    """model_activation_bytes (one block of each kind, then the head) equals the kept tensors of the
    whole step graph, block by block."""
    args = scaled_down(preset(name), n_mtp_layers=2)
    ops = step_graph(args, 2, 16, "train", device="cpu", act_dtype="bf16").ops
    if recompute == "none":
        expected = sum(i.bytes for op in ops for i in op.saved)
    else:
        blocks: dict[str, list[GraphOp]] = {}
        for op in ops:
            blocks.setdefault(op.block, []).append(op)
        expected = sum(i.bytes for op in blocks.pop("") for i in op.saved)
        for block in blocks.values():
            items = [i for op in block for i in op.saved]
            if recompute == "selective":
                expected += sum(i.bytes for i in items if not i.selective_drops)
            else:
                expected += block[0].reads["x"] + sum(i.bytes for i in items if i.outside_autograd)
    assert model_activation_bytes(args, 2, 16, "bf16", "cpu", recompute) == expected
    assert all(
        not op.saved for op in step_graph(args, 2, 16, "prefill").ops
    )  # inference keeps nothing


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_id=5), "layer_id"),
        (dict(device="tpu"), "device"),
        (dict(act_dtype="fp8"), "activation dtype"),
        (dict(mode="serve"), "mode"),
        (dict(attn_kernel="flash"), "attn_kernel"),
        (dict(batch=0), "batch"),
        (dict(context=-1), "context"),
    ],
)
def test_bad_input(kwargs, match):
    call = dict(args=preset("tiny"), layer_id=1, batch=1, seq_len=8)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        block_graph(**call)
