"""Properties of the library's API under random input (issue 19): every call either does what it
promises or raises a ValueError that names the culprit; nothing returns NaN, nothing raises
another exception type.

    quantizers     random finite tensors of any float dtype round-trip within the format's bound
                   (INT: half a step, or one step with a zero point; FP8: E4M3's relative
                   precision) or raise ValueError; never NaN or inf
    ModelArgs      random field values either validate and build a model whose forward pass gives
                   finite logits, or raise ValueError naming a ModelArgs field
    Transformer    random token tensors (any dtype, shape, start_pos) give finite logits or raise
                   ValueError
    Calibration    random dicts load or raise ValueError

Deterministic (derandomize=True): the same examples on every run, so CI never flakes.
"""

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsim.config import ModelArgs
from dsim.cost.timing.calibration import Calibration
from dsim.model import Transformer
from dsim.quant import act_quant, dequantize, fake_quant, quantize, quantize_fp8

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# any finite float64, with extra weight on the edges of float32 and float16
edge = st.sampled_from([0.0, 1e-45, 6e-8, 6.1e-5, 65504.0, 458528.0, 3.3e38, 3.4e38, 1e39])
finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    edge,
    edge.map(lambda v: -v),
    st.floats(-10, 10),
)


def tensor_of(values: list[float], dtype: torch.dtype, width: int) -> torch.Tensor:
    """values as [rows, width] in `dtype` (a float64 value past the dtype's range becomes inf,
    which the quantizers must refuse)."""
    x = torch.tensor(values, dtype=torch.float64)
    return x[: len(values) // width * width].reshape(-1, width).to(dtype)


# ------------------------------------------------------------------------------------------
# Quantizers
# ------------------------------------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(
    values=st.lists(finite, min_size=4, max_size=16),
    dtype=st.sampled_from(FLOAT_DTYPES),
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    scale_dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
)
def test_integer_quantization_round_trips_or_raises(
    values, dtype, bits, symmetric, granularity, scale_dtype
):
    x = tensor_of(values, dtype, 4)
    try:
        qt = quantize(x, bits, granularity, 2, symmetric, scale_dtype=scale_dtype)
    except ValueError as e:
        assert str(e)  # the message says why
        return
    out = dequantize(qt)
    assert torch.isfinite(out).all()
    # every code sits on a grid of step s; a zero point may clip one end by half a step more
    bound = qt.scale.double().max() * (0.5 if symmetric else 1.0)
    assert float((out.double() - x.double()).abs().max()) <= float(bound)
    # fake quantization (QAT) computes the same numbers in the input's dtype
    fq = fake_quant(x, bits, granularity, 2, symmetric, scale_dtype)
    torch.testing.assert_close(fq, out.to(dtype), rtol=0, atol=0)


@settings(max_examples=100, **SETTINGS)
@given(
    values=st.lists(finite, min_size=4, max_size=16),
    dtype=st.sampled_from(FLOAT_DTYPES),
    scale_fmt=st.sampled_from([None, "ue8m0"]),
)
def test_fp8_quantization_round_trips_or_raises(values, dtype, scale_fmt):
    x = tensor_of(values, dtype, 2)
    try:
        qt = quantize_fp8(x, 2, scale_fmt)
        y, s = act_quant(x, 2, scale_fmt)
    except ValueError as e:
        assert str(e)
        return
    for out, scales in (
        (dequantize(qt), qt.scale.repeat_interleave(2, 0).repeat_interleave(2, 1)[: len(x)]),
        (y.float() * s.repeat_interleave(2, -1), s.repeat_interleave(2, -1)),
    ):
        assert torch.isfinite(out).all()
        # E4M3: 3 mantissa bits (relative error <= 2^-4), subnormals spaced 2^-9 (times s)
        err = (out.double() - x.double()).abs()
        assert (err <= x.double().abs() * 2**-4 + scales.double() * 2**-9).all()


# ------------------------------------------------------------------------------------------
# ModelArgs and the forward pass
# ------------------------------------------------------------------------------------------
BASE = dict(
    vocab_size=61,
    dim=16,
    inter_dim=24,
    moe_inter_dim=8,
    n_layers=2,
    n_dense_layers=1,
    n_heads=2,
    n_routed_experts=4,
    n_shared_experts=1,
    n_activated_experts=2,
    kv_lora_rank=8,
    qk_nope_head_dim=4,
    qk_rope_head_dim=4,
    v_head_dim=4,
    max_seq_len=16,
    original_seq_len=16,
)
junk = st.sampled_from([None, "2", "softmax", True, False, -1, 0, 1.5, math.nan, math.inf, [1]])
small_int = st.integers(-1, 9)
FIELD_VALUES = {
    **{
        name: st.one_of(small_int, junk)
        for name in (
            "n_layers",
            "n_dense_layers",
            "n_heads",
            "n_routed_experts",
            "n_shared_experts",
            "n_activated_experts",
            "n_expert_groups",
            "n_limited_groups",
            "q_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "head_dim",
            "n_kv_heads",
            "n_mtp_layers",
        )
    },
    **{
        name: st.one_of(st.integers(-1, 40), junk)
        for name in ("dim", "inter_dim", "moe_inter_dim", "kv_lora_rank", "max_seq_len")
    },
    "original_seq_len": st.one_of(st.integers(-1, 40), junk),
    "vocab_size": st.one_of(st.integers(-1, 300), junk),
    # plausible magnitudes (1e30 would overflow float32 activations: a range, not a validity
    # question) plus the invalid ones
    "route_scale": st.one_of(st.floats(-1, 100), junk),
    "capacity_factor": st.one_of(st.floats(-1, 4), junk),
    "norm_eps": st.one_of(st.floats(-1e-6, 1.0), junk),
    "rope_theta": st.one_of(st.floats(0, 1e6), junk),
    "rope_factor": st.one_of(st.floats(0, 64), junk),
    "mscale": st.one_of(st.floats(-1, 4), junk),
    "beta_fast": st.one_of(st.floats(-1, 64), junk),
    "beta_slow": st.one_of(st.floats(-1, 64), junk),
    "tie_embeddings": junk,
    "route_norm": junk,
    "score_func": st.one_of(st.sampled_from(["softmax", "sigmoid"]), junk),
    "group_score": st.one_of(st.sampled_from(["top2_sum", "max"]), junk),
    "attn_type": st.one_of(st.sampled_from(["mla", "mha", "gqa"]), junk),
    "attn_impl": st.one_of(st.sampled_from(["naive", "absorb"]), junk),
    "expert_impl": st.one_of(st.sampled_from(["grouped", "loop"]), junk),
    "drop_policy": st.one_of(st.sampled_from(["score", "position"]), junk),
}
FIELDS = {f.name for f in dataclasses.fields(ModelArgs)}


@settings(max_examples=120, **SETTINGS)
@given(changes=st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.data(), max_size=4))
def test_model_args_build_a_finite_model_or_name_a_field(changes):
    kw = {**BASE, **{k: v.draw(FIELD_VALUES[k], label=k) for k, v in changes.items()}}
    try:
        args = ModelArgs(**kw)
    except ValueError as e:
        named = str(e).split("ModelArgs.")[1].split(" ")[0]
        assert named in FIELDS, str(e)
        return
    torch.manual_seed(0)
    model = Transformer(args).eval()
    tokens = torch.randint(0, args.vocab_size, (2, min(args.max_seq_len, 5)))
    with torch.no_grad():
        logits = model(tokens)
    assert logits.shape == (*tokens.shape, args.vocab_size)
    assert torch.isfinite(logits).all(), args


@settings(max_examples=40, **SETTINGS)
@given(
    field=st.sampled_from(sorted(FIELD_VALUES)),
    data=st.data(),
)
def test_assignment_validates_like_construction(field, data):
    value = data.draw(FIELD_VALUES[field])
    args = ModelArgs(**BASE)
    try:
        ModelArgs(**{**BASE, field: value})
        valid = True
    except ValueError:
        valid = False
    if valid:
        setattr(args, field, value)
        assert getattr(args, field) == value or value != value  # NaN is never equal to itself
    else:
        with pytest.raises(ValueError, match="ModelArgs"):
            setattr(args, field, value)
        assert args == ModelArgs(**BASE)


# ------------------------------------------------------------------------------------------
# Transformer inputs
# ------------------------------------------------------------------------------------------
MODEL = None


def tiny_model() -> Transformer:
    global MODEL
    if MODEL is None:
        torch.manual_seed(0)
        MODEL = Transformer(ModelArgs(**BASE)).eval()
    return MODEL


@settings(max_examples=60, **SETTINGS)
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    dtype=st.sampled_from(
        [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32]
    ),
    high=st.integers(1, 300),
    start_pos=st.one_of(st.integers(-2, 16), st.sampled_from([True, 1.0, None])),
    use_cache=st.booleans(),
)
def test_forward_gives_finite_logits_or_a_value_error(shape, dtype, high, start_pos, use_cache):
    model = tiny_model()
    model.reset_cache()
    tokens = torch.randint(0, high, shape, generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(dtype)
    try:
        with torch.no_grad():
            logits = model(tokens, start_pos, use_cache)
    except ValueError as e:
        assert str(e)
        return
    assert logits.shape == (*shape, model.args.vocab_size)
    assert torch.isfinite(logits).all()


@settings(max_examples=30, **SETTINGS)
@given(
    temperature=st.one_of(st.floats(), st.sampled_from([0, 1, True, "1"])),
    n=st.one_of(st.integers(-1, 20), st.sampled_from([1.0, True])),
)
def test_generate_samples_or_raises(temperature, n):
    model = tiny_model()
    prompt = torch.randint(0, 61, (2, 3), generator=torch.Generator().manual_seed(0))
    try:
        out = model.generate(prompt, n, temperature, generator=torch.Generator().manual_seed(0))
    except ValueError as e:
        assert str(e)
        return
    assert out.shape == (2, 3 + n) and int(out.min()) >= 0 and int(out.max()) < 61


# ------------------------------------------------------------------------------------------
# Timing calibration files
# ------------------------------------------------------------------------------------------
@settings(max_examples=60, **SETTINGS)
@given(
    d=st.one_of(
        st.dictionaries(
            st.sampled_from(["bw_eff", "mma_eff", "attn_eff", "gpu", "bogus", 3]),
            st.one_of(st.floats(0, 1), st.text(max_size=3), st.none(), st.booleans(), junk),
            max_size=3,
        ),
        junk,
    )
)
def test_calibration_from_dict_loads_or_raises_value_error(d):
    try:
        cal = Calibration.from_dict(d)
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(cal, Calibration)
