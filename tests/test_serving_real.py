"""The real serving check: batched decode of requests at different positions in their own cache
rows (slots) equals decoding each request alone, and dsim.serving.real's loop keeps its books
(every request served once, in order of the policy, never more than max_batch at a time)."""

import pytest
import torch

from dsim.config import ModelArgs, preset
from dsim.model import Transformer

ATOL = 1e-5  # fp32 logits; measured differences ~3e-6

PROMPTS = (5, 9, 3, 12)  # one request per slot, each at its own length
SLOTS = (3, 0, 5, 1)
STEPS = 4

CONFIGS = {
    "tiny-naive": preset("tiny"),
    "tiny-absorb": preset("tiny", attn_impl="absorb"),
    # GQA with a sliding window of 4 on layer 0 (shorter than every prompt) and attention sinks
    "gqa-window-sink": preset(
        "tiny",
        attn_type="gqa",
        head_dim=16,
        n_kv_heads=2,
        sliding_window=4,
        window_layers=(0,),
        attn_sink=True,
    ),
    # DeepSeek-V3.2's indexer picks 6 keys. With few indexer heads many index scores are exactly 0
    # (relu) and top-k breaks such ties by position in a longer or shorter row; 16 heads make
    # ties rare, so both decodes pick the same keys.
    "indexer-absorb": preset(
        "tiny",
        q_lora_rank=16,
        index_n_heads=16,
        index_head_dim=16,
        index_topk=6,
        attn_impl="absorb",
    ),
    "indexer-naive": preset(
        "tiny", q_lora_rank=16, index_n_heads=16, index_head_dim=16, index_topk=6
    ),
}


def _model(args: ModelArgs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(args).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_ragged_decode_equals_per_sequence_decode(name):
    model = _model(CONFIGS[name])
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (1, n + STEPS), generator=gen) for n in PROMPTS]
    with torch.no_grad():
        alone = []  # each request by itself: cache row 0, the shared start_pos
        for seq, n in zip(seqs, PROMPTS):
            model.reset_cache()
            model(seq[:, :n], use_cache=True)
            steps = [
                model(seq[:, i : i + 1], i, use_cache=True)[0, -1] for i in range(n, n + STEPS)
            ]
            alone.append(torch.stack(steps))  # [STEPS, V]
        model.reset_cache()
        # stale rows: slots hold another request's longer history beyond each prompt
        model(torch.randint(0, 256, (4, 20), generator=gen), use_cache=True)
        for seq, n, slot in zip(seqs, PROMPTS, SLOTS):
            model(seq[:, :n], use_cache=True, slots=torch.tensor([slot]))  # prefill into a slot
        batched = []
        for k in range(STEPS):
            tokens = torch.cat([seq[:, n + k : n + k + 1] for seq, n in zip(seqs, PROMPTS)])
            positions = torch.tensor([n + k for n in PROMPTS])
            logits = model(tokens, use_cache=True, slots=torch.tensor(SLOTS), positions=positions)
            batched.append(logits[:, -1])  # [B, V]
    batched = torch.stack(batched, dim=1)  # [B, STEPS, V]
    for b in range(len(PROMPTS)):
        torch.testing.assert_close(batched[b], alone[b], atol=ATOL, rtol=ATOL)


def test_prefill_of_a_slot_after_a_cached_prefix_equals_one_prefill():
    model = _model(CONFIGS["tiny-absorb"])
    tokens = torch.randint(0, 256, (1, 14))
    slot = torch.tensor([2])
    with torch.no_grad():
        whole = model(tokens)
        model.reset_cache()
        head = model(tokens[:, :6], use_cache=True, slots=slot)
        tail = model(tokens[:, 6:], start_pos=6, use_cache=True, slots=slot)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole, atol=ATOL, rtol=ATOL)


def _bad(model, tokens, match, **kw):
    with pytest.raises(ValueError, match=match):
        model(tokens, **{"use_cache": True, **kw})


def test_bad_slots_and_positions_raise_value_error():
    model = _model(preset("tiny", max_batch_size=4))
    one, two = torch.zeros(1, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    _bad(
        model,
        two,
        r"slots must be in \[0, ModelArgs.max_batch_size=4\)",
        slots=torch.tensor([0, 4]),
    )
    _bad(model, two, "slots must be in", slots=torch.tensor([-1, 0]))
    _bad(model, two, "distinct", slots=torch.tensor([1, 1]))
    _bad(model, two, r"shape \(3,\)", slots=torch.tensor([0, 1, 2]))
    _bad(model, one, "integer", slots=torch.tensor([0.0]))
    _bad(model, one, "use_cache", slots=torch.tensor([0]), use_cache=False)
    _bad(model, one, "positions need slots", positions=torch.tensor([3]))
    _bad(
        model, two, r"max_seq_len=256", slots=torch.tensor([0, 1]), positions=torch.tensor([3, 256])
    )
    _bad(
        model,
        two,
        "positions must be in",
        slots=torch.tensor([0, 1]),
        positions=torch.tensor([-1, 2]),
    )
    _bad(model, two, r"shape \(1,\)", slots=torch.tensor([0, 1]), positions=torch.tensor([2]))
    _bad(
        model,
        torch.zeros(1, 3, dtype=torch.long),
        r"tokens must be \[batch, 1\]",
        slots=torch.tensor([0]),
        positions=torch.tensor([2]),
    )
    _bad(
        model,
        one,
        "leave start_pos at 0",
        start_pos=2,
        slots=torch.tensor([0]),
        positions=torch.tensor([2]),
    )
