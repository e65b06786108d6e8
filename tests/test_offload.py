"""Expert offloading (dsim.offload) and its cost model (dsim.cost.offload)."""

from __future__ import annotations

import pytest
import torch

from dsim.config import preset
from dsim.cost.offload import (
    decode_seconds,
    expert_bytes,
    lru_hit_rate,
    offload_claim_1p5t,
    offload_memory,
    routing_load,
    simulate_lru,
    zipf_load,
)
from dsim.model import Transformer
from dsim.offload import OffloadedExperts, offload_experts, routing_trace
from dsim.quant import clone_model

# three layers: a dense one, then two MoE layers (so that prefetching has a next layer)
ARGS = preset("tiny").replace(n_layers=3, expert_impl="loop")
TOKENS = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(3))


def _model(**changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ARGS.replace(**changes)).eval()


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("cache_size", range(1, 9))
def test_offloaded_logits_equal_the_resident_model(cache_size, prefetch):
    model = _model()
    with torch.no_grad():
        ref = model(TOKENS)
    layers = offload_experts(model, cache_size, prefetch=prefetch)
    with torch.no_grad():
        assert torch.equal(model(TOKENS), ref)  # bit for bit, every cache size
        assert torch.equal(model(TOKENS), ref)  # and again with a warm cache
    st = layers[1].stats()
    assert st["hits"] + st["misses"] > 0 and st["bytes_copied"] > 0
    assert (st["prefetched"] > 0) == prefetch
    assert layers[0].stats()["prefetched"] == 0  # nothing before the first MoE layer prefetches


def test_grouped_resident_model_equal_to_rounding():
    model = _model(expert_impl="grouped")
    with torch.no_grad():
        ref = model(TOKENS)
        offload_experts(model, 3)
        torch.testing.assert_close(model(TOKENS), ref, rtol=1e-5, atol=1e-5)


def test_decode_with_cache_matches_and_counts_like_the_simulation():
    """Greedy decoding (one token per step, KV cache) gives the resident model's tokens, and the
    layer's hits and misses are the LRU replay of its own routing trace."""
    model = _model()
    prompt = TOKENS[:1, :8]
    ref = model.generate(prompt, 12)
    offloaded = clone_model(model)
    layers = offload_experts(offloaded, 3)
    traces: list[list[list[int]]] = [[] for _ in layers]
    moes = offloaded.moe_layers()
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o, j=j: traces[j].append(mod.routing.indices.flatten().tolist())
        )
        for j, m in enumerate(moes)
    ]
    assert torch.equal(offloaded.generate(prompt, 12), ref)
    for h in hooks:
        h.remove()
    for layer, trace in zip(layers, traces):
        sim = simulate_lru(trace, 3)
        st = layer.stats()
        assert (st["hits"], st["misses"]) == (sim["hits"], sim["misses"])


def test_che_approximation_against_the_trace():
    """Che's approximation from the routing shares alone, against the exact LRU replay of a
    decode-like trace (one token per step) of the model's own routing, for caches that hold a
    step's k experts (below that a step's experts evict each other, which Che's independent
    requests do not see): never above the replay by more than 0.02 (it ignores that neighbouring
    tokens route alike, so it is the cautious estimate), and within 0.2 below it."""
    model = _model()
    tokens = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(5))
    for trace in routing_trace(model, tokens):  # [T, K] per MoE layer
        steps = trace.tolist()
        load = routing_load(steps, 8)
        for c in range(2, 8):
            sim = simulate_lru(steps, c)["hit_rate"]
            che = lru_hit_rate(load, c, 2)
            assert sim - 0.2 < che < sim + 0.02, (c, che, sim)


def test_hit_rate_model():
    assert lru_hit_rate(zipf_load(64, 0.0), 16, 6) == pytest.approx(16 / 64)  # uniform: C / E
    skewed = [lru_hit_rate(zipf_load(64, s), 16, 6) for s in (0.0, 0.5, 1.0, 1.5)]
    assert skewed == sorted(skewed)  # more skew, more hits
    assert lru_hit_rate(zipf_load(8, 1.0), 8, 2) == 1.0


def test_memory_and_time():
    args = preset("deepseek-v2-lite")
    one, full = offload_memory(args, 1), offload_memory(args, 64)
    assert full["device"] == pytest.approx(full["resident_all"])
    assert one["device"] + 63 * 26 * expert_bytes(args) == pytest.approx(full["device"])
    slow = decode_seconds(args, "h100", "pcie4", hit_rate=0.25)
    fast = decode_seconds(args, "h100", "pcie5", hit_rate=0.25)
    c2c = decode_seconds(args, "h100", "nvlink-c2c", hit_rate=0.25)
    assert slow["transfer"] == pytest.approx(2 * fast["transfer"])
    assert slow["total"] > fast["total"] > c2c["total"]
    none = decode_seconds(args, "h100", "pcie5", hit_rate=1.0)
    assert none["transfer"] == 0 and none["total"] == none["compute"]
    assert decode_seconds(args, "h100", "pcie5", 0.5, overlap=True)["total"] == max(
        fast["compute"], decode_seconds(args, "h100", "pcie5", 0.5)["transfer"]
    )


def test_offload_claim_1p5t():
    """a0's 1.5T model: only one expert per layer on the GPUs fits 320 GB (FP16), and then nearly
    every expert a token needs crosses PCIe: tens of seconds per token."""
    out = offload_claim_1p5t()
    assert out["params_per_expert"] == pytest.approx(96e9)
    rows = {r["cache_size"]: r for r in out["rows"]}
    assert rows[1]["fits"] and not rows[2]["fits"]
    assert rows[1]["transfer_seconds_per_token"] > 20
    assert rows[16]["hit_rate"] == 1.0 and rows[16]["transfer_seconds_per_token"] == 0


def test_bad_input_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="cache_size"):
        offload_experts(model, 0)
    with pytest.raises(ValueError, match="cache_size"):
        OffloadedExperts(model.moe_layers()[0].experts, 9)
    with pytest.raises(ValueError, match="no MoE"):
        offload_experts(Transformer(ARGS.replace(n_layers=1, n_dense_layers=1)), 1)
    with pytest.raises(ValueError, match="link"):
        decode_seconds(preset("tiny"), "h100", "usb", 0.5)
    with pytest.raises(ValueError, match="hit_rate"):
        decode_seconds(preset("tiny"), "h100", "pcie5", 1.5)
    with pytest.raises(ValueError, match="load"):
        lru_hit_rate([0, 0], 1, 1)


def test_measure_script_cpu_path(tmp_path):
    """bench/offload_measure.py on the CPU: every cache size decodes, and without prefetching the
    misses never grow with the cache (LRU is a stack algorithm: a larger cache holds a superset)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "offload_measure.py"
    spec = importlib.util.spec_from_file_location("offload_measure", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--device", "cpu", "--out", str(tmp_path / "o.json")])
    plain = [r for r in out["records"] if not r["prefetch"]]
    assert [r["cache_size"] for r in plain] == [1, 2, 4, 8]
    misses = [r["misses"] for r in plain]
    assert misses == sorted(misses, reverse=True) and misses[0] > misses[-1]
    assert all(r["tokens_per_s"] > 0 for r in out["records"])
    assert any(r["prefetched"] > 0 for r in out["records"] if r["prefetch"])


def test_committed_routing_run_agrees_with_the_cost_model():
    """dsim/data/offload_routing_cpu.json: Che's column is lru_hit_rate of the recorded shares, and
    the replayed hit rate is at least Che's (less 0.02) once a token's K experts fit."""
    import json
    from pathlib import Path

    run = json.loads(
        (Path(__file__).resolve().parents[1] / "dsim/data/offload_routing_cpu.json").read_text()
    )
    K = run["n_activated_experts"]
    for model in run["models"].values():
        for layer in model["layers"]:
            for r in layer["rows"]:
                assert r["che"] == pytest.approx(lru_hit_rate(layer["load"], r["cache_size"], K))
                if r["cache_size"] >= K:
                    assert r["replayed"] > r["che"] - 0.02
    # the balanced model's shares are flatter, and its cache hits less
    un, bal = (run["models"][k]["layers"][0] for k in ("unbalanced", "balanced"))
    assert max(bal["load"]) < max(un["load"])
    assert bal["rows"][3]["replayed"] < un["rows"][3]["replayed"]


def test_other_families_expert_features_are_refused():
    """Expert biases, a clamped SwiGLU or a gated shared expert (gpt-oss, Qwen2-MoE) are not
    computed by the offloaded, adapted or exported experts: each refuses such a layer."""
    from dsim.export import ExportableLM
    from dsim.lora import LoRAExperts

    for change in ("bias", "limit", "shared_gate"):
        model = _model()
        moe = model.moe_layers()[0]
        if change == "bias":
            moe.experts.b1 = torch.nn.Parameter(torch.zeros(8, 32))
        elif change == "limit":
            moe.experts.swiglu_limit = 7.0
        else:
            moe.shared_gate = torch.nn.Linear(64, 1, bias=False)
        with pytest.raises(ValueError, match="cannot run"):
            ExportableLM(model)
        if change != "shared_gate":  # the experts themselves
            with pytest.raises(ValueError, match="cannot run"):
                OffloadedExperts(moe.experts, 2)
            with pytest.raises(ValueError, match="cannot run"):
                LoRAExperts(moe.experts, 2, 4.0)
