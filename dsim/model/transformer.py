"""Blocks, multi-token prediction and the transformer."""

from __future__ import annotations

import torch
from torch import nn

from dsim.config import ModelArgs
from dsim.model.attention import GQA, MLA, Indexer
from dsim.model.layers import make_norm, precompute_freqs_cis
from dsim.model.moe import MLP, MoE


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)).

    Layers listed in args.window_layers attend within args.sliding_window tokens (an MTP block,
    whose layer_id is n_layers or more, attends fully)."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        window = args.sliding_window if layer_id in args.window_layers else 0
        self.attn = MLA(args) if args.attn_type == "mla" else GQA(args, window)
        self.ffn = MLP(args.dim, args.inter_dim) if layer_id < args.n_dense_layers else MoE(args)
        self.attn_norm = make_norm(args.dim, args)
        self.ffn_norm = make_norm(args.dim, args)

    def forward(
        self,
        x: torch.Tensor,
        start_pos: int,
        freqs_cis: torch.Tensor,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), start_pos, freqs_cis, use_cache, slots, positions)
        return x + self.ffn(self.ffn_norm(x))


class MTPModule(nn.Module):
    """One multi-token-prediction depth (DeepSeek-V3 section 2.2).

    h'_i = M [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})], then a full transformer block, then the
    shared output head after this module's own final norm. The embedding and the head are the main
    model's (shared, not owned here). The concatenation order (embedding first) follows the
    released V3 weights (`enorm`, `hnorm`, `eh_proj`).
    """

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.enorm = make_norm(args.dim, args)
        self.hnorm = make_norm(args.dim, args)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.block = Block(layer_id, args)
        self.norm = make_norm(args.dim, args)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        """h: [B, S', D] previous depth's hidden states; emb: [B, S', D] embeddings of the tokens k
        ahead."""
        h = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return self.block(h, 0, freqs_cis)


class Transformer(nn.Module):
    """The decoder-only MoE language model."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = make_norm(args.dim, args)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.head.weight = self.embed.weight
        # MTP blocks use the MoE FFN when the model has MoE layers (as V3's layer 61 does).
        mtp_layer_id = args.n_layers if args.is_moe else 0
        self.mtp = nn.ModuleList(MTPModule(mtp_layer_id, args) for _ in range(args.n_mtp_layers))
        # A plain attribute, not a buffer: Module.to(torch.bfloat16) would cast the complex
        # rotations to real numbers. hidden() moves it to the tokens' device; it stays complex64.
        self.freqs_cis = precompute_freqs_cis(args)
        nn.init.normal_(self.embed.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embed.weight" and not name.endswith("gate.weight"):
                nn.init.normal_(p, std=p.shape[1] ** -0.5)

    def hidden(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last block's output, before the final norm: [B, S] token ids -> [B, S, D].

        tokens may have any integer dtype; uint8 (dsim's byte corpus) and the others are read as
        int64 ids. Float and bool tensors, shapes other than [B, S] with B, S >= 1, a negative
        start_pos, or start_pos > 0 without use_cache raise ValueError.

        A serving loop keeps each request in its own cache row (slot), at its own position:
        slots [B] (distinct, in [0, max_batch_size), with use_cache) names the cache row of each
        batch row (a prefill of one request: slots of size 1, start_pos 0 or its cached length);
        positions [B] (with slots, S == 1 and start_pos 0) gives each row's position, for one
        decode step of requests at different positions. See `_check_rows`.
        """
        tokens = _check_tokens(tokens, "tokens")
        if isinstance(start_pos, bool) or not isinstance(start_pos, int) or start_pos < 0:
            raise ValueError(f"start_pos = {start_pos!r} is invalid: must be an integer >= 0")
        if start_pos and not use_cache:
            raise ValueError(
                f"start_pos = {start_pos} needs use_cache=True: without the KV cache there are no "
                "earlier positions to attend to"
            )
        bsz, seqlen = tokens.shape
        if slots is not None or positions is not None:
            slots, positions, start_pos = _check_rows(
                slots, positions, tokens, start_pos, use_cache, self.args
            )
        if positions is None and start_pos + seqlen > self.args.max_seq_len:
            raise ValueError(
                f"start_pos + sequence length = {start_pos + seqlen} exceeds "
                f"ModelArgs.max_seq_len={self.args.max_seq_len}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.args.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.args.vocab_size})")
        if self.freqs_cis.device != tokens.device:
            self.freqs_cis = self.freqs_cis.to(tokens.device)
        if positions is None:
            freqs_cis = self.freqs_cis[start_pos : start_pos + seqlen]  # [S, rope_dim/2]
        else:
            freqs_cis = self.freqs_cis[positions].unsqueeze(1)  # [B, 1, rope_dim/2]
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, start_pos, freqs_cis, use_cache, slots, positions)
        return h

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every position: [B, S] -> [B, S, V]. With use_cache, keys/values (or MLA
        latents) of positions start_pos.. are kept, so a later call can decode from
        start_pos + S. slots and positions: per-request cache rows and positions (see hidden):
        model(next_tokens [B, 1], use_cache=True, slots=slots, positions=positions) is one
        decode step of B requests of different lengths."""
        return self.head(self.norm(self.hidden(tokens, start_pos, use_cache, slots, positions)))

    def mtp_logits(self, h: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Logits of each MTP depth k = 1..D from the main hidden states h [B, S, D] and
        tokens [B, S].

        Depth k at position i combines h^{k-1}_i with the embedding of t_{i+k} and predicts
        t_{i+k+1}; it returns [B, S-k, V] (position i in 0..S-k-1).
        """
        out = []
        for k, module in enumerate(self.mtp, start=1):
            seqlen = tokens.shape[1] - k
            h = module(h[:, :seqlen], self.embed(tokens[:, k:]), self.freqs_cis[:seqlen])
            out.append(self.head(module.norm(h)))
        return out

    def moe_layers(self) -> list[MoE]:
        """Every MoE FFN (main layers then MTP blocks), for routing statistics and balancing."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def reset_cache(self) -> None:
        for m in self.modules():
            if isinstance(m, (MLA, GQA, Indexer)):
                m.cache.clear()

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy (temperature 0) or sampled decoding with the KV cache.
        prompt: [B, S] -> [B, S + n] int64."""
        prompt = _check_tokens(prompt, "prompt")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens = {max_new_tokens!r} must be an integer >= 0")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        real = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (real and 0 <= temperature < float("inf")):  # False for NaN
            # a NaN or negative temperature used to decode greedily without a word
            raise ValueError(
                f"temperature = {temperature!r} is invalid: must be a finite number >= 0 "
                "(0: greedy)"
            )
        if max_new_tokens and prompt.shape[1] + max_new_tokens - 1 > self.args.max_seq_len:
            raise ValueError(
                f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} - 1 exceeds "
                f"ModelArgs.max_seq_len={self.args.max_seq_len}"
            )
        self.reset_cache()
        tokens, pos = prompt, 0
        step_in = prompt
        for _ in range(max_new_tokens):
            logits = self(step_in, start_pos=pos, use_cache=True)[:, -1]
            pos += step_in.shape[1]
            if temperature > 0:
                # shifted to max 0 and in float64: a tiny temperature gives one-hot, not NaN
                z = (logits - logits.amax(-1, keepdim=True)).double() / temperature
                nxt = torch.multinomial(z.softmax(-1), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            step_in = nxt
        self.reset_cache()
        return tokens


def _check_tokens(tokens: torch.Tensor, what: str) -> torch.Tensor:
    """Token ids as int64 [B, S] with B, S >= 1; any integer dtype is accepted (uint8 is what
    dsim's byte corpus holds). Float or bool tensors and other shapes raise ValueError."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(
            f"{what} has dtype {tokens.dtype}: token ids must be integers (int64, int32, uint8...)"
        )
    if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(
            f"{what} must be [batch, seq] with batch, seq >= 1, got shape {tuple(tokens.shape)}"
        )
    return tokens.long()


def _check_rows(
    slots: torch.Tensor | None,
    positions: torch.Tensor | None,
    tokens: torch.Tensor,
    start_pos: int,
    use_cache: bool,
    args: ModelArgs,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(slots, positions, start_pos) for the layers, or ValueError naming what is wrong: slots
    and positions as int64 on the tokens' device; start_pos unchanged, or with positions their
    maximum (the layers read the cache up to the longest row).

    slots [B]: distinct cache rows in [0, max_batch_size), with use_cache. positions [B]: with
    slots, for one-token steps (tokens [B, 1]) with start_pos 0; each in [0, max_seq_len).
    """
    bsz, seqlen = tokens.shape
    if slots is None:
        raise ValueError("positions need slots: the cache rows the positions are in")
    if not use_cache:
        raise ValueError("slots need use_cache=True: a slot is a row of the KV cache")
    rows = {"slots": slots} if positions is None else {"slots": slots, "positions": positions}
    for what, t in rows.items():
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{what} must be an integer torch.Tensor of shape [{bsz}]")
        if tuple(t.shape) != (bsz,):
            raise ValueError(
                f"{what} has shape {tuple(t.shape)}: must be [batch] = [{bsz}], one per row"
            )
    slots = slots.long()
    if int(slots.min()) < 0 or int(slots.max()) >= args.max_batch_size:
        raise ValueError(
            f"slots must be in [0, ModelArgs.max_batch_size={args.max_batch_size}), got "
            f"{slots.tolist()}"
        )
    if len(set(slots.tolist())) != bsz:
        raise ValueError(f"slots must be distinct, got {slots.tolist()}")
    if positions is not None:
        if seqlen != 1:
            raise ValueError(
                f"positions are for one-token decode steps: tokens must be [batch, 1], got "
                f"sequence length {seqlen}"
            )
        if start_pos != 0:
            raise ValueError(
                f"start_pos = {start_pos} with positions: leave start_pos at 0, each row's "
                "position is in positions"
            )
        positions = positions.long()
        start_pos = int(positions.max())
        if int(positions.min()) < 0 or start_pos >= args.max_seq_len:
            raise ValueError(
                f"positions must be in [0, ModelArgs.max_seq_len={args.max_seq_len}), got "
                f"{positions.tolist()}"
            )
        positions = positions.to(tokens.device)
    return slots.to(tokens.device), positions, start_pos
