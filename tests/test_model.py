"""The model is right: equal to Hugging Face's DeepSeek-V3, equal to itself across implementations,
and careful about each known trap of DeepSeek routing."""

import pytest
import torch

from dsim.config import ModelArgs, preset, preset_names, scaled_down
from dsim.hf import from_hf_state_dict, hf_config
from dsim.model import Gate, MoE, Transformer, capacity_mask

# A DeepSeek-V3-shaped model at a tiny size: sigmoid gate, 4 groups keep 2, low-rank q, MTP off.
SMALL_V3 = dict(
    vocab_size=97,
    dim=32,
    inter_dim=48,
    moe_inter_dim=16,
    n_layers=3,
    n_dense_layers=1,
    n_heads=4,
    n_routed_experts=8,
    n_shared_experts=1,
    n_activated_experts=2,
    n_expert_groups=4,
    n_limited_groups=2,
    score_func="sigmoid",
    route_scale=2.5,
    q_lora_rank=12,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    max_seq_len=64,
    original_seq_len=64,
)

# Tolerances for fp32 logits (|logits| ~ 0.5): measured max difference ~1e-7.
ATOL, RTOL = 1e-5, 1e-5


def build(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs(**{**SMALL_V3, **changes})).eval()


@pytest.mark.parametrize("yarn", [False, True], ids=["rope", "yarn"])
def test_equals_transformers_deepseek_v3(yarn):
    transformers = pytest.importorskip("transformers")
    args = ModelArgs(**{**SMALL_V3, **({"original_seq_len": 32, "rope_factor": 2} if yarn else {})})
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(**hf_config(args))
    cfg._attn_implementation = "eager"
    hf = transformers.DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():  # a non-zero correction bias exercises the choice-only path
        for layer in hf.model.layers[args.n_dense_layers :]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    model = Transformer(args).eval()
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), args), strict=True)
    tokens = torch.randint(0, args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(tokens).logits, model(tokens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_group_masking_uses_minus_inf_not_zero():
    """DeepSeek masks dropped groups with -inf. transformers' router used to mask them with 0.0:
    when the bias makes every kept score negative, a 0.0 in a dropped group wins the top-k and the
    token lands in a group it was never allowed. dsim must choose only from the kept groups."""
    args = ModelArgs(**SMALL_V3)
    gate = Gate(args)
    with torch.no_grad():
        gate.weight.zero_()  # all sigmoid scores 0.5
        gate.bias.copy_(torch.tensor([-0.6, -0.7, -0.9, -0.95, -2.0, -2.1, -2.2, -2.3]))
    x = torch.randn(5, args.dim)
    routing = gate(x)
    kept_groups = {0, 1}  # group scores: sums of choice scores, best two
    assert set(routing.indices.flatten().tolist()) <= {
        2 * g + i for g in kept_groups for i in (0, 1)
    }
    # The 0.0-masked variant picks from a dropped group here (that is the
    # bug being guarded against):
    choice = (routing.scores + gate.bias).view(5, 4, 2)
    keep = choice.topk(2, dim=-1)[0].sum(-1).topk(2, dim=-1)[1]
    dropped = torch.ones(5, 4, dtype=torch.bool).scatter_(1, keep, False)
    zero_masked = choice.masked_fill(dropped.unsqueeze(-1), 0.0).flatten(1).topk(2, dim=-1)[1]
    assert not set(zero_masked.flatten().tolist()) <= {0, 1, 2, 3}


def test_bias_steers_choice_but_never_enters_weights():
    args = ModelArgs(**SMALL_V3)
    gate = Gate(args)
    x = torch.randn(16, args.dim)
    with torch.no_grad():
        gate.bias.copy_(torch.linspace(1.0, -1.0, 8))
    r = gate(x)
    expected = r.scores.gather(1, r.indices)
    expected = expected / expected.sum(-1, keepdim=True) * args.route_scale
    torch.testing.assert_close(r.weights, expected)
    assert torch.all(r.scores >= 0) and torch.all(r.scores <= 1)  # bias not added to scores either
    with torch.no_grad():
        gate.bias.zero_()
    assert not torch.equal(gate(x).indices, r.indices)  # but it did change the choice


@pytest.mark.parametrize("impl", ["naive", "absorb"])
@pytest.mark.parametrize("kind", ["mla", "mla-qlora0", "mha", "gqa"])
def test_incremental_decoding_equals_full_forward(kind, impl):
    changes = {"attn_impl": impl}
    if kind == "mla-qlora0":
        changes["q_lora_rank"] = 0
    elif kind in ("mha", "gqa"):
        changes.update(attn_type=kind, head_dim=8, n_kv_heads=2 if kind == "gqa" else 0)
    model = build(**changes)
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        model.reset_cache()
        first = model(tokens[:, :5], start_pos=0, use_cache=True)  # prefill 5
        steps = [model(tokens[:, i : i + 1], start_pos=i, use_cache=True) for i in range(5, 9)]
        chunk = model(tokens[:, 9:], start_pos=9, use_cache=True)  # a 3-token chunk
    torch.testing.assert_close(torch.cat([first, *steps, chunk], dim=1), full, atol=ATOL, rtol=RTOL)


def test_naive_and_absorbed_mla_agree():
    naive, absorb = build(attn_impl="naive"), build(attn_impl="absorb")
    tokens = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(absorb(tokens), naive(tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
def test_loop_and_grouped_experts_agree_with_gradients(capacity_factor):
    results = []
    for impl in ("loop", "grouped"):
        model = build(expert_impl=impl, capacity_factor=capacity_factor).train()
        tokens = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(3))
        loss = model(tokens).logsumexp(-1).mean()
        loss.backward()
        results.append(
            (
                loss.detach(),
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            )
        )
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-6)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


def test_routing_ties_pick_exactly_k_distinct_experts():
    args = ModelArgs(**{**SMALL_V3, "n_expert_groups": 1, "n_limited_groups": 1})
    moe = MoE(args)
    with torch.no_grad():
        moe.gate.weight.zero_()  # every score ties
    x = torch.randn(7, args.dim)
    y_grouped = moe(x)
    r = moe.routing
    assert r.indices.shape == (7, args.n_activated_experts)
    assert all(len(set(row)) == args.n_activated_experts for row in r.indices.tolist())
    moe.args = args.replace(expert_impl="loop")
    torch.testing.assert_close(moe(x), y_grouped, atol=1e-6, rtol=1e-6)


def test_expert_with_no_token_gets_zero_gradient():
    args = ModelArgs(**{**SMALL_V3, "n_expert_groups": 1, "n_limited_groups": 1})
    moe = MoE(args)
    with torch.no_grad():
        moe.gate.bias[5] = -10.0  # expert 5 is never chosen
    x = torch.randn(9, args.dim, requires_grad=True)
    moe(x).sum().backward()
    assert 5 not in moe.routing.indices.tolist()
    assert torch.count_nonzero(moe.experts.w1.grad[5]) == 0
    assert torch.count_nonzero(moe.experts.w1.grad[moe.routing.indices[0, 0]]) > 0


def test_batch_of_one_token():
    model = build()
    with torch.no_grad():
        out = model(torch.tensor([[5]]))
    assert out.shape == (1, 1, 97) and torch.isfinite(out).all()


def test_capacity_mask_drops_the_lowest_scores():
    args = ModelArgs(
        **{**SMALL_V3, "n_expert_groups": 1, "n_limited_groups": 1, "capacity_factor": 0.5}
    )
    moe = MoE(args)
    with torch.no_grad():
        moe.gate.bias[0] = 5.0  # everybody wants expert 0
    moe(torch.randn(16, args.dim))
    r = moe.routing
    capacity = -(-int(0.5 * 16 * 2) // 8)
    kept_on_0 = ((r.indices == 0) & (r.weights != 0)).sum().item()
    assert kept_on_0 == capacity
    assert r.dropped == (r.weights == 0).sum().item() > 0
    # the kept ones have the highest scores on expert 0
    s0 = r.scores[:, 0]
    kept = s0[((r.indices == 0) & (r.weights != 0)).any(-1)]
    assert kept.min() >= s0[(r.indices == 0).any(-1)].sort(descending=True).values[capacity - 1]
    assert capacity_mask(r, 8, 100.0, "position").all()


def test_presets_build_scaled_down_and_train_step():
    for name in preset_names():
        args = scaled_down(preset(name))
        model = Transformer(args.replace(n_mtp_layers=min(args.n_mtp_layers, 1)))
        tokens = torch.randint(0, args.vocab_size, (2, 8))
        loss = model(tokens).logsumexp(-1).mean()
        loss.backward()
        assert torch.isfinite(loss), name


def test_generate_is_greedy_argmax_of_full_forward():
    model = build()
    prompt = torch.randint(0, 97, (1, 4))
    out = model.generate(prompt, 5)
    with torch.no_grad():
        for i in range(4, 9):
            assert out[0, i] == model(out[:, :i])[0, -1].argmax()


# ------------------------------------------------------------------------------------------
# Bad input (issue 19, defect 13): a ValueError that says what to change, never a deep torch error
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda t: t[:0], "batch, seq >= 1"),  # empty batch
        (lambda t: t[:, :0], "batch, seq >= 1"),  # empty sequence
        (lambda t: t[0], r"got shape \(8,\)"),  # 1-D
        (lambda t: t[None], r"got shape \(1, 2, 8\)"),  # 3-D
        (lambda t: t.float(), "float32: token ids must be integers"),
        (lambda t: t > 5, "bool: token ids must be integers"),
        (lambda t: t.tolist(), "torch.Tensor"),
    ],
    ids=["empty-batch", "empty-seq", "1d", "3d", "float", "bool", "list"],
)
def test_bad_tokens_raise_value_error(make, match):
    """Issue 19, defect 13: these hit IndexError/RuntimeError deep in torch (a float or bool
    tensor, an empty batch, 1-D or 3-D tokens)."""
    model = build()
    tokens = torch.randint(0, 97, (2, 8))
    with pytest.raises(ValueError, match=match):
        model(make(tokens))
    with pytest.raises(ValueError, match=match.replace("tokens", "prompt")):
        model.generate(make(tokens), 2)


def test_negative_start_pos_raises():
    """Issue 19, defect 13: start_pos = -1 sliced the RoPE table from the end."""
    with pytest.raises(ValueError, match="start_pos = -1"):
        build()(torch.randint(0, 97, (2, 8)), start_pos=-1)


def test_uint8_tokens_are_accepted_as_ids():
    """Issue 19, defect 13: uint8 (the dtype of dsim's byte corpus, get_corpus) is read as int64
    ids, by the forward pass and by generate (a design choice: bytes are token ids here)."""
    model = build()
    tokens = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens.to(torch.uint8)), model(tokens), rtol=0, atol=0)
    out = model.generate(tokens.to(torch.uint8), 3)
    assert out.dtype == torch.int64 and torch.equal(out, model.generate(tokens, 3))


@pytest.mark.parametrize("temperature", [-1.0, float("nan"), float("inf"), True, "0.5"])
def test_generate_refuses_a_temperature_it_cannot_sample_at(temperature):
    """Issue 19, defect 13: temperature -1 or NaN decoded greedily without a word."""
    with pytest.raises(ValueError, match="temperature"):
        build().generate(torch.randint(0, 97, (1, 4)), 2, temperature=temperature)


def test_generate_checks_the_length_before_decoding_and_a_tiny_temperature_is_greedy():
    """Issue 19, defect 13: too many new tokens failed halfway through decoding; a temperature of
    1e-300 gave NaN probabilities (logits / T overflowed) instead of the greedy choice."""
    model = build()
    limit = model.args.max_seq_len
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.randint(0, 97, (1, 4)), limit - 2)
    assert model.generate(torch.randint(0, 97, (1, 4)), limit - 3).shape == (1, limit + 1)
    prompt = torch.randint(0, 97, (2, 4))
    gen = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, 4, temperature=1e-300, generator=gen)
    assert torch.equal(sampled, model.generate(prompt, 4))


def test_start_pos_without_the_cache_raises():
    """Issue 19, defect 13: start_pos > 0 without use_cache built a mask for keys that are not
    there (RuntimeError in scaled_dot_product_attention). Found by test_properties_lib.py."""
    model = build()
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model(torch.randint(0, 97, (1, 1)), start_pos=1)


@pytest.mark.parametrize("changes", [dict(kv_lora_rank=15), dict(qk_nope_head_dim=7)])
def test_odd_mla_widths_run(changes):
    """Issue 19, defect 6: an odd kv_lora_rank (or qk_nope_head_dim) put the RoPE slice at an odd
    offset, which view_as_complex refuses (RuntimeError). Found by test_properties_lib.py."""
    model = build(**changes)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 97, (2, 5)))).all()
