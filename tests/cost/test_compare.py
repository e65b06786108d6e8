"""The side-by-side profiles (the MoE zoo) are the cost views' own numbers, and each design choice
moves the number it should."""

import pytest

from dsim.config import preset
from dsim.cost import flops, params
from dsim.cost.compare import profile, table
from dsim.cost.memory import memory


def test_profile_is_the_cost_views_numbers():
    v3 = preset("deepseek-v3")
    pr = profile(v3, contexts=(4096,), context=4096, batch=2)
    assert pr.total == params(v3).total_no_mtp
    assert pr.active == params(v3).active_no_embedding
    assert pr.kv_bytes_per_token == {4096: 61 * (512 + 64) * 2}
    assert pr.flops_per_token == flops(v3, 1, 4096, "decode").total_causal
    mem = memory(v3.replace(n_mtp_layers=0), mode="inference", batch=2, seq_len=4096)
    assert pr.serve_bytes == mem.weights + mem.kv_cache
    assert pr.expert_width == pytest.approx(2048 / 7168)


def test_sliding_window_and_top_k_change_what_they_should():
    mix = preset("mixtral-8x7b")
    windowed = mix.replace(sliding_window=4096, window_layers=tuple(range(0, 32, 2)))
    full, half = profile(mix), profile(windowed)
    # half the layers keep 4K of 32K and 128K tokens
    assert half.kv_bytes_per_token[32768] == full.kv_bytes_per_token[32768] * (1 + 4 / 32) / 2
    assert half.kv_bytes_per_token[131072] == full.kv_bytes_per_token[131072] * (1 + 4 / 128) / 2
    assert half.flops_per_token < full.flops_per_token
    assert half.total == full.total  # a window changes no weight
    v3 = preset("deepseek-v3")
    v32 = v3.replace(index_n_heads=64, index_head_dim=128, index_topk=2048)
    a, b = profile(v3, context=131072), profile(v32, context=131072)
    assert b.kv_bytes_per_token[131072] > a.kv_bytes_per_token[131072]  # the indexer's key
    assert b.flops_per_token < a.flops_per_token  # attention over 2048 keys, not 128K
    assert b.total > a.total  # the indexer's weights


def test_mxfp4_experts_shrink_serving_memory():
    mix = preset("mixtral-8x7b")
    bf16, mx = profile(mix), profile(mix, expert_dtype="mxfp4")
    routed = params(mix).breakdown["routed_experts"]
    assert bf16.serve_bytes - mx.serve_bytes == pytest.approx(routed * (2 - 0.53125))


def test_table_rows_and_bad_input():
    rows = table([profile(preset("deepseek-v3")), profile(preset("mixtral-8x7b"))])
    assert rows[0]["experts"] == "8/256+1" and rows[1]["experts"] == "2/8+0"
    assert rows[0]["KV KiB/token @32K"] == 68.6
    with pytest.raises(ValueError, match="context"):
        profile(preset("deepseek-v3"), context=0)
    with pytest.raises(ValueError, match="args"):
        profile("deepseek-v3")
