"""Training on real text: the corpus, the losses, the loop, and multi-token-prediction decoding.

The corpus is the Python standard library's own source, read from disk (no download), as bytes:
a 256-token vocabulary that needs no tokenizer. Every 20th file (sorted by name) is held out.

The loop trains the main next-token loss plus, each switchable on its own (dsim.balance):
the auxiliary-loss-free bias update, the sequence-wise balance loss, a Switch-style auxiliary
loss, a router z-loss, and the multi-token-prediction (MTP) loss. Every step records the expert
load (per layer and expert), its imbalance and entropy, and the tokens a capacity limit dropped.
Checkpoints (safetensors, no pickle) live in dsim.checkpoint and resume bit-exactly.

    trainer = Trainer(preset("tiny"), TrainConfig(steps=300, bias_update_speed=0.001))
    history = trainer.run()
    mtp_acceptance_rate(trainer.model, get_corpus("val"))     # when n_mtp_layers >= 1
"""

from __future__ import annotations

import dataclasses
import math
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dsim import balance
from dsim.config import ModelArgs, preset
from dsim.model import Transformer

LOG2E = 1.0 / math.log(2.0)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def get_corpus(split: str = "train", max_bytes: int | None = None) -> torch.Tensor:
    """The standard library's top-level *.py files as one uint8 tensor of bytes.

    split: "train" (19 of every 20 files) or "val" (every 20th file, sorted by name).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        raise RuntimeError(
            f"no standard-library sources found under {sysconfig.get_paths()['stdlib']}"
        )
    chosen = [f for i, f in enumerate(files) if (i % 20 == 19) == (split == "val")]
    data = b"".join(f.read_bytes() for f in chosen)
    if max_bytes is not None:
        data = data[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def unigram_entropy(data: torch.Tensor) -> float:
    """Entropy of the byte distribution in bits per byte: the loss of the best context-free
    model."""
    p = torch.bincount(data.long(), minlength=256).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def get_batch(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs x [B, S] and next-byte targets y [B, S] (int64)."""
    _check_data(data, seq_len)
    start = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = start[:, None] + torch.arange(seq_len + 1)
    window = data[idx].long()
    return window[:, :-1], window[:, 1:]


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_data(data: torch.Tensor, seq_len: int, vocab_size: int | None = None) -> None:
    """Token ids: 1-D, integer (floats truncate), > seq_len + 1 long, < vocab_size if given."""
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.dtype not in _INT_DTYPES:
        got = f"{data.dtype} {tuple(data.shape)}" if torch.is_tensor(data) else type(data).__name__
        raise ValueError(f"data must be a 1-D tensor of integer token ids (uint8 bytes), got {got}")
    if data.numel() <= seq_len + 1:
        raise ValueError(f"corpus of {data.numel()} bytes is too short for seq_len={seq_len}")
    if vocab_size is not None and not 0 <= int(data.min()) <= int(data.max()) < vocab_size:
        raise ValueError(
            f"data holds token ids {int(data.min())}..{int(data.max())}: must be in "
            f"[0, ModelArgs.vocab_size={vocab_size})"
        )


# ------------------------------------------------------------------------------------------
# Training configuration
# ------------------------------------------------------------------------------------------
Schedule = tuple[tuple[int, float], ...]


@dataclass
class TrainConfig:
    """What to train and how; every balancing method is off unless set.

    Optimisation:
        steps, batch_size, seq_len: the run (batch_size * seq_len tokens per step).
        lr, warmup, min_lr_ratio: linear warm-up then cosine decay to min_lr_ratio * lr.
        weight_decay (matrices only), grad_clip (0: off), seed.
        gate_lr_mult: the router's weights train at gate_lr_mult * lr (1: like everything else). A
            larger value makes routing collapse show at small scale in few steps.
    Balancing (dsim.balance):
        bias_update_speed: gamma of DeepSeek-V3's auxiliary-loss-free bias update (paper: 0.001).
        bias_update_schedule: (step, gamma) changes, e.g. ((950, 0.0),): from step 950 on gamma = 0
            (the paper stops the update for its last 500B of 14.8T tokens).
        seq_aux_alpha: weight of the sequence-wise balance loss (paper: 0.0001).
        switch_aux_alpha: weight of the Switch-Transformer auxiliary loss (Switch: 0.01).
        z_loss: weight of the router z-loss (ST-MoE: 0.001).
    Multi-token prediction (needs ModelArgs.n_mtp_layers = D >= 1):
        mtp_lambda: weight lambda of the MTP loss, applied as lambda / D * sum_k L_k (paper: 0.3).
        mtp_lambda_schedule: (step, lambda) changes, e.g. ((676, 0.1),): the paper trains the first
            10T of 14.8T tokens at 0.3 and the rest at 0.1 (see `deepseek_v3_recipe`).
    Evaluation and data:
        eval_every (0: never), eval_batches: held-out bits per byte every eval_every steps.
        max_train_bytes: use only the first bytes of the training corpus (None: all of it).
    """

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    gate_lr_mult: float = 1.0
    seed: int = 0
    bias_update_speed: float = 0.0
    bias_update_schedule: Schedule = ()
    seq_aux_alpha: float = 0.0
    switch_aux_alpha: float = 0.0
    z_loss: float = 0.0
    mtp_lambda: float = 0.0
    mtp_lambda_schedule: Schedule = ()
    eval_every: int = 0
    eval_batches: int = 8
    max_train_bytes: int | None = None

    def __post_init__(self) -> None:
        self.bias_update_schedule = _check_schedule(
            "bias_update_schedule", self.bias_update_schedule
        )
        self.mtp_lambda_schedule = _check_schedule("mtp_lambda_schedule", self.mtp_lambda_schedule)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed range for any invalid value."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: must be {allowed}"
                )

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return (
                isinstance(v, (int, float, np.integer, np.floating))
                and not isinstance(v, bool)
                and math.isfinite(v)
            )

        for name in ("steps", "batch_size", "seq_len", "eval_batches"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("warmup", "eval_every", "seed"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("lr", "gate_lr_mult"):
            need(
                is_real(getattr(self, name)) and getattr(self, name) > 0,
                name,
                "a finite number > 0",
            )
        for name in (
            "weight_decay",
            "grad_clip",
            "bias_update_speed",
            "seq_aux_alpha",
            "switch_aux_alpha",
            "z_loss",
            "mtp_lambda",
        ):
            need(
                is_real(getattr(self, name)) and getattr(self, name) >= 0,
                name,
                "a finite number >= 0",
            )
        need(
            is_real(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]"
        )
        need(
            self.max_train_bytes is None
            or (is_int(self.max_train_bytes) and self.max_train_bytes > self.seq_len + 1),
            "max_train_bytes",
            f"None or an integer > seq_len + 1 = {self.seq_len + 1}",
        )

    # ---- schedules ----
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (
            self.min_lr_ratio
            + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        )

    def mtp_lambda_at(self, step: int) -> float:
        """MTP weight lambda at a step: mtp_lambda, then each (step, value) of
        mtp_lambda_schedule."""
        return _piecewise(self.mtp_lambda, self.mtp_lambda_schedule, step)

    def bias_update_speed_at(self, step: int) -> float:
        """Bias update speed gamma at a step: bias_update_speed, then bias_update_schedule's
        changes."""
        return _piecewise(self.bias_update_speed, self.bias_update_schedule, step)

    # ---- (de)serialisation, for checkpoints and JSON results ----
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("bias_update_schedule", "mtp_lambda_schedule"):
            d[name] = [list(pair) for pair in d[name]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def _check_schedule(name: str, schedule: Any) -> Schedule:
    """A schedule as a tuple of (int step, float value) pairs with increasing steps and
    values >= 0."""
    try:
        pairs = tuple((s, v) for s, v in schedule)
    except (TypeError, ValueError):
        raise ValueError(
            f"TrainConfig.{name} = {schedule!r} is invalid: must be a sequence of "
            "(step, value) pairs"
        ) from None
    out = []
    for s, v in pairs:
        ok_step = isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
        ok_value = (
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0
        )
        if not (ok_step and ok_value):
            raise ValueError(
                f"TrainConfig.{name} has the pair ({s!r}, {v!r}): steps must be integers >= 0 "
                "and values finite numbers >= 0"
            )
        if out and s <= out[-1][0]:
            raise ValueError(
                f"TrainConfig.{name} steps must increase strictly, got {s} after {out[-1][0]}"
            )
        out.append((int(s), float(v)))
    return tuple(out)


def _piecewise(initial: float, schedule: Schedule, step: int) -> float:
    value = initial
    for start, v in schedule:
        if step >= start:
            value = v
    return value


def deepseek_v3_recipe(steps: int) -> dict[str, Any]:
    """DeepSeek-V3's balancing and MTP settings (section 4.2), with its token fractions mapped to
    steps.

    gamma = 0.001 for the first 14.3T of 14.8T tokens, then 0; alpha = 0.0001; MTP lambda = 0.3 for
    the first 10T tokens, then 0.1. Use as TrainConfig(steps=steps, **deepseek_v3_recipe(steps)).
    """
    return dict(
        bias_update_speed=0.001,
        bias_update_schedule=((round(steps * 14.3 / 14.8), 0.0),),
        seq_aux_alpha=1e-4,
        mtp_lambda=0.3,
        mtp_lambda_schedule=((round(steps * 10 / 14.8), 0.1),),
    )


@dataclass
class History:
    """Per-step records of a run (plain lists, cheap to log every step)."""

    loss: list[float] = field(default_factory=list)  # main next-token loss, nats
    # mean MTP cross-entropy over depths, nats (0: off)
    mtp_loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)  # sum of the balance/z losses as added
    # [layers, E] fraction of assignments per expert
    load: list[np.ndarray] = field(default_factory=list)
    # max load / mean load, averaged over layers
    imbalance: list[float] = field(default_factory=list)
    # load entropy / log(E), averaged over layers
    entropy: list[float] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # assignments dropped by capacity, all layers
    bias: list[np.ndarray] = field(default_factory=list)  # [layers, E] gate biases after the step
    val_bpb: list[tuple[int, float]] = field(default_factory=list)

    @property
    def bits_per_byte(self) -> list[float]:
        return [l * LOG2E for l in self.loss]


# ------------------------------------------------------------------------------------------
# Losses and one step
# ------------------------------------------------------------------------------------------
def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def compute_losses(
    model: Transformer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, step: int = 0
) -> dict[str, torch.Tensor]:
    """Forward pass and every loss term: {'loss' (what backward sees), 'main', 'mtp', 'aux'}.

    loss = main + lambda / D * sum_k mtp_k + balance losses (DeepSeek-V3 eq. 25 for the MTP part).
    """
    # ANCHOR: mtp_loss
    h = model.hidden(x)  # [B, S, D]
    main = lm_loss(model.head(model.norm(h)), y)
    out = {"main": main, "mtp": torch.zeros(()), "aux": torch.zeros(())}
    total = main
    lam = cfg.mtp_lambda_at(step)
    if model.args.n_mtp_layers and lam > 0:
        # depth k at position i predicts t_{i+k+1} = y[:, i+k]
        mtp = [
            lm_loss(logits, y[:, k:]) for k, logits in enumerate(model.mtp_logits(h, x), start=1)
        ]
        out["mtp"] = torch.stack(mtp).mean()
        total = total + lam * out["mtp"]  # lambda / D * sum_k = lambda * mean_k
    # ANCHOR_END: mtp_loss
    aux = balance.aux_losses(model, x.shape, cfg)
    out["aux"] = aux
    out["loss"] = total + aux
    return out


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW in three groups: matrices (decayed), the router weights (decayed, lr * gate_lr_mult),
    and vectors (norm weights: no decay). The gate's bias is a buffer, never optimised.

    Each group carries `name` and `lr_mult` (the training step sets lr = lr_at(step) * lr_mult).
    """
    groups: dict[str, list[torch.nn.Parameter]] = {"matrices": [], "router": [], "vectors": []}
    for name, p in model.named_parameters():
        if name.endswith("gate.weight"):
            groups["router"].append(p)
        elif p.dim() >= 2:
            groups["matrices"].append(p)
        else:
            groups["vectors"].append(p)
    settings = {
        "matrices": (cfg.weight_decay, 1.0),
        "router": (cfg.weight_decay, cfg.gate_lr_mult),
        "vectors": (0.0, 1.0),
    }
    param_groups = [
        {
            "params": ps,
            "name": g,
            "weight_decay": settings[g][0],
            "lr_mult": settings[g][1],
            "lr": cfg.lr * settings[g][1],
        }
        for g, ps in groups.items()
        if ps
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(
    model: Transformer,
    data: torch.Tensor,
    seq_len: int = 128,
    batches: int = 8,
    batch_size: int = 16,
    seed: int = 1234,
) -> float:
    """Bits per byte of the main head on random windows of `data` (fixed seed: comparable across
    models)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [
        lm_loss(model(x), y).item()
        for x, y in (get_batch(data, batch_size, seq_len, gen) for _ in range(batches))
    ]
    model.train(was_training)
    return float(np.mean(losses)) * LOG2E


class Trainer:
    """A training run that can be stepped, checkpointed and resumed bit-exactly (with
    dsim.checkpoint's save_checkpoint and load_checkpoint, which import this module: not the other
    way round).

    Holds the model, the AdamW optimizer, the batch generator (the only randomness after
    initialisation), the step counter and the History. `data` defaults to the training corpus.
    """

    def __init__(self, args: ModelArgs, cfg: TrainConfig, data: torch.Tensor | None = None):
        if args.max_seq_len < cfg.seq_len:
            args = args.replace(
                max_seq_len=cfg.seq_len, original_seq_len=max(args.original_seq_len, cfg.seq_len)
            )
        needs_mtp = cfg.mtp_lambda > 0 or any(v > 0 for _, v in cfg.mtp_lambda_schedule)
        if needs_mtp and args.n_mtp_layers == 0:
            raise ValueError(
                "TrainConfig.mtp_lambda > 0 needs a model with MTP modules: "
                "set ModelArgs.n_mtp_layers >= 1"
            )
        if data is not None:  # checked once here: get_batch takes random windows of it
            _check_data(data, cfg.seq_len, args.vocab_size)
        self.args, self.cfg = args, cfg
        torch.manual_seed(cfg.seed)
        self.model = Transformer(args)
        self.optimizer = make_optimizer(self.model, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.data = get_corpus("train", cfg.max_train_bytes) if data is None else data
        self.step = 0
        self.history = History()

    def train_step(self) -> dict[str, float]:
        """One optimizer step; appends to the history and returns this step's numbers."""
        cfg, model = self.cfg, self.model
        model.train()
        for moe in model.moe_layers():
            moe.routing = None  # no stale routing from an earlier step or evaluation
        x, y = get_batch(self.data, cfg.batch_size, cfg.seq_len, self.generator)
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        losses = compute_losses(model, x, y, cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        stats = balance.load_stats(model)  # the load this step's batch put on each expert
        gamma = cfg.bias_update_speed_at(self.step)
        if gamma > 0:
            balance.update_bias(model, gamma)
        h = self.history
        h.loss.append(losses["main"].item())
        h.mtp_loss.append(losses["mtp"].item())
        h.aux_loss.append(losses["aux"].item())
        h.load.append(stats.load)
        h.imbalance.append(stats.imbalance)
        h.entropy.append(stats.entropy)
        h.dropped.append(stats.dropped)
        h.bias.append(balance.gate_biases(model))
        self.step += 1
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            h.val_bpb.append(
                (self.step, evaluate(model, get_corpus("val"), cfg.seq_len, cfg.eval_batches))
            )
        return {
            "loss": h.loss[-1],
            "mtp_loss": h.mtp_loss[-1],
            "aux_loss": h.aux_loss[-1],
            "imbalance": stats.imbalance,
            "entropy": stats.entropy,
            "dropped": stats.dropped,
            "lr": lr,
        }

    def run(self, steps: int | None = None, progress: bool = True) -> History:
        """Train until `steps` total steps (default cfg.steps), with a tqdm progress bar."""
        target = self.cfg.steps if steps is None else steps
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not progress, leave=False)
        while self.step < target:
            self.train_step()
            bar.update(1)
            bar.set_postfix(
                bpb=f"{self.history.bits_per_byte[-1]:.3f}", imb=f"{self.history.imbalance[-1]:.2f}"
            )
        bar.close()
        return self.history


def train(
    args: ModelArgs | str = "tiny",
    cfg: TrainConfig | None = None,
    progress: bool = True,
    **cfg_changes,
) -> tuple[Transformer, History]:
    """Train a model (a preset name or ModelArgs) on the standard library's text; returns
    (model, history)."""
    args = preset(args) if isinstance(args, str) else args
    cfg = dataclasses.replace(cfg or TrainConfig(), **cfg_changes)
    trainer = Trainer(args, cfg)
    trainer.run(progress=progress)
    return trainer.model, trainer.history


# ------------------------------------------------------------------------------------------
# Multi-token prediction as a draft model: self-speculative decoding
# ------------------------------------------------------------------------------------------
@dataclass
class MTPAcceptance:
    """How well the first MTP module drafts the second token (greedy self-speculative decoding)."""

    rate: float  # P(main model's token after its own proposal == MTP draft)
    n: int  # positions measured
    main_accuracy: float  # P(main proposal == the true next byte)
    draft_accuracy: float  # P(MTP draft == the true byte after next), given the main proposal

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens per main-model forward with one draft: 1 + acceptance rate."""
        return 1.0 + self.rate


@torch.no_grad()
def mtp_acceptance(
    model: Transformer,
    data: torch.Tensor,
    context: int = 64,
    windows: int = 256,
    batch_size: int = 64,
    seed: int = 1234,
) -> MTPAcceptance:
    """Greedy acceptance rate of the second token when MTP drafts it, on windows of held-out text.

    For each window x_1..x_S of real text (S = context):
      1. the main head proposes a = argmax p(. | x_1..x_S)                (token S+1)
      2. MTP depth 1 drafts d = argmax p_MTP(. | h_1..h_S, Emb(x_2..x_S, a))  (token S+2)
      3. the main model verifies: m = argmax p(. | x_1..x_S, a)
    The draft is accepted when m == d: one main forward then yields two tokens. This is
    DeepSeek-V3's use of MTP for speculative decoding (section 5.4.3 reports 85-90% acceptance at
    full scale); the window start positions come from a fixed seed, so the result is deterministic.
    """
    if not len(model.mtp):
        raise ValueError("the model has no MTP module: build it with ModelArgs.n_mtp_layers >= 1")
    if not 1 <= context <= model.args.max_seq_len - 1:
        raise ValueError(
            f"context = {context} is invalid: must be in [1, max_seq_len - 1 = "
            f"{model.args.max_seq_len - 1}]"
        )
    if windows < 1 or batch_size < 1:
        raise ValueError(f"windows = {windows} and batch_size = {batch_size} must be >= 1")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    accepted = main_ok = draft_ok = n = 0
    for start in range(0, windows, batch_size):
        b = min(batch_size, windows - start)
        x, y = get_batch(data, b, context + 1, gen)  # x: [b, S+1], y: [b, S+1]
        ctx, true_next, true_after = x[:, :context], x[:, context], y[:, context]
        # ANCHOR: mtp_draft
        a = model(ctx)[:, -1].argmax(-1)  # [b] main proposal
        ext = torch.cat([ctx, a[:, None]], dim=1)  # [b, S+1]
        h = model.hidden(ext)  # [b, S+1, D]
        verify = model.head(model.norm(h[:, -1])).argmax(-1)  # [b] main's token after a
        draft = model.mtp_logits(h, ext)[0][:, -1].argmax(-1)  # [b] depth-1 draft after a
        accepted += int((verify == draft).sum())
        # ANCHOR_END: mtp_draft
        main_ok += int((a == true_next).sum())
        draft_ok += int((draft == true_after).sum())
        n += b
    model.train(was_training)
    return MTPAcceptance(
        rate=accepted / n, n=n, main_accuracy=main_ok / n, draft_accuracy=draft_ok / n
    )


def mtp_acceptance_rate(
    model: Transformer,
    data: torch.Tensor,
    context: int = 64,
    windows: int = 256,
    batch_size: int = 64,
    seed: int = 1234,
) -> float:
    """The greedy acceptance rate of the MTP draft of the second token (see `mtp_acceptance`)."""
    return mtp_acceptance(model, data, context, windows, batch_size, seed).rate
