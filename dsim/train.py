"""Training on real text: the corpus, the losses, the loop, and checkpoints.

The corpus is the Python standard library's own source, read from disk (no download), as bytes:
a 256-token vocabulary that needs no tokenizer. Every 20th file (sorted by name) is held out.

The loop trains the main next-token loss plus, each switchable on its own (dsim.balance):
the auxiliary-loss-free bias update, the sequence-wise balance loss, a Switch-style auxiliary
loss, a router z-loss, and the multi-token-prediction loss.
"""
from __future__ import annotations

import dataclasses
import math
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

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
        raise RuntimeError(f"no standard-library sources found under {sysconfig.get_paths()['stdlib']}")
    chosen = [f for i, f in enumerate(files) if (i % 20 == 19) == (split == "val")]
    data = b"".join(f.read_bytes() for f in chosen)
    if max_bytes is not None:
        data = data[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def unigram_entropy(data: torch.Tensor) -> float:
    """Entropy of the byte distribution in bits per byte: the loss of the best context-free model."""
    p = torch.bincount(data.long(), minlength=256).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs x [B, S] and next-byte targets y [B, S]."""
    if data.numel() <= seq_len + 1:
        raise ValueError(f"corpus of {data.numel()} bytes is too short for seq_len={seq_len}")
    start = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = start[:, None] + torch.arange(seq_len + 1)
    window = data[idx].long()
    return window[:, :-1], window[:, 1:]


# ------------------------------------------------------------------------------------------
# Training configuration
# ------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """What to train and how; every balancing method is off unless set.

    bias_update_speed: gamma of DeepSeek-V3's auxiliary-loss-free balancing (paper: 0.001).
    seq_aux_alpha: weight of the sequence-wise balance loss (paper: 0.0001).
    switch_aux_alpha: weight of the Switch-Transformer auxiliary loss (Switch: 0.01).
    z_loss: weight of the router z-loss (ST-MoE: 0.001).
    mtp_lambda: weight lambda of the MTP loss, applied as lambda / D (paper: 0.3, then 0.1).
    """
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    bias_update_speed: float = 0.0
    seq_aux_alpha: float = 0.0
    switch_aux_alpha: float = 0.0
    z_loss: float = 0.0
    mtp_lambda: float = 0.0
    eval_every: int = 0
    eval_batches: int = 8
    max_train_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: must be an integer >= 1")
        for name in ("lr", "bias_update_speed", "seq_aux_alpha", "switch_aux_alpha", "z_loss", "mtp_lambda",
                     "weight_decay", "warmup", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio = {self.min_lr_ratio} is invalid: must be in [0, 1]")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass
class History:
    """Per-step records of a run (plain lists, cheap to log every step)."""
    loss: list[float] = field(default_factory=list)          # main next-token loss, nats
    mtp_loss: list[float] = field(default_factory=list)      # mean MTP cross-entropy, nats
    aux_loss: list[float] = field(default_factory=list)      # sum of the balance/z losses as added
    load: list[np.ndarray] = field(default_factory=list)     # [layers, E] fraction of assignments per expert
    imbalance: list[float] = field(default_factory=list)     # max load / mean load, averaged over layers
    dropped: list[int] = field(default_factory=list)         # assignments dropped by capacity, all layers
    val_bpb: list[tuple[int, float]] = field(default_factory=list)

    @property
    def bits_per_byte(self) -> list[float]:
        return [l * LOG2E for l in self.loss]


# ------------------------------------------------------------------------------------------
# Losses and one step
# ------------------------------------------------------------------------------------------
def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def compute_losses(model: Transformer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Forward pass and every loss term: {'loss' (what backward sees), 'main', 'mtp', 'aux'}."""
    h = model.hidden(x)
    main = lm_loss(model.head(model.norm(h)), y)
    out = {"main": main, "mtp": torch.zeros(()), "aux": torch.zeros(())}
    total = main
    if model.args.n_mtp_layers and cfg.mtp_lambda > 0:
        # depth k at position i predicts t_{i+k+1} = y[:, i+k]
        mtp = [lm_loss(logits, y[:, k:]) for k, logits in enumerate(model.mtp_logits(h, x), start=1)]
        out["mtp"] = torch.stack(mtp).mean()
        total = total + cfg.mtp_lambda * out["mtp"]          # lambda / D * sum_k = lambda * mean_k
    aux = balance.aux_losses(model, x.shape, cfg)
    out["aux"] = aux
    out["loss"] = total + aux
    return out


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms or the gate's bias buffer)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: Transformer, data: torch.Tensor, seq_len: int = 128, batches: int = 8,
             batch_size: int = 16, seed: int = 1234) -> float:
    """Bits per byte of the main head on random windows of `data` (fixed seed: comparable across models)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [lm_loss(model(x), y).item() for x, y in
              (get_batch(data, batch_size, seq_len, gen) for _ in range(batches))]
    model.train(was_training)
    return float(np.mean(losses)) * LOG2E


class Trainer:
    """A training run that can be stepped, checkpointed and resumed bit-exactly (dsim.checkpoint)."""

    def __init__(self, args: ModelArgs, cfg: TrainConfig):
        if args.max_seq_len < cfg.seq_len:
            args = args.replace(max_seq_len=cfg.seq_len, original_seq_len=max(args.original_seq_len, cfg.seq_len))
        self.args, self.cfg = args, cfg
        torch.manual_seed(cfg.seed)
        self.model = Transformer(args)
        self.optimizer = make_optimizer(self.model, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.data = get_corpus("train", cfg.max_train_bytes)
        self.step = 0
        self.history = History()

    def train_step(self) -> None:
        cfg, model = self.cfg, self.model
        model.train()
        x, y = get_batch(self.data, cfg.batch_size, cfg.seq_len, self.generator)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        losses = compute_losses(model, x, y, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        stats = balance.load_stats(model)
        if cfg.bias_update_speed > 0:
            balance.update_bias(model, cfg.bias_update_speed)
        h = self.history
        h.loss.append(losses["main"].item())
        h.mtp_loss.append(losses["mtp"].item())
        h.aux_loss.append(losses["aux"].item())
        h.load.append(stats.load)
        h.imbalance.append(stats.imbalance)
        h.dropped.append(stats.dropped)
        self.step += 1
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            h.val_bpb.append((self.step, evaluate(model, get_corpus("val"), cfg.seq_len, cfg.eval_batches)))

    def run(self, steps: int | None = None, progress: bool = True) -> History:
        """Train until `steps` total steps (default cfg.steps), with a tqdm progress bar."""
        target = self.cfg.steps if steps is None else steps
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not progress, leave=False)
        while self.step < target:
            self.train_step()
            bar.update(1)
            bar.set_postfix(bpb=f"{self.history.bits_per_byte[-1]:.3f}")
        bar.close()
        return self.history


def train(args: ModelArgs | str = "tiny", cfg: TrainConfig | None = None, progress: bool = True,
          **cfg_changes) -> tuple[Transformer, History]:
    """Train a model (a preset name or ModelArgs) on the standard library's text; returns (model, history)."""
    args = preset(args) if isinstance(args, str) else args
    cfg = dataclasses.replace(cfg or TrainConfig(), **cfg_changes)
    trainer = Trainer(args, cfg)
    trainer.run(progress=progress)
    return trainer.model, trainer.history
