"""Knowledge distillation: a smaller MoE student trained from a teacher's logits.

Hinton et al. (2015): the student matches the teacher's softened distribution as well as the data,

    loss = alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)) + (1 - alpha) * CE(z_s, y)

where z_t, z_s are the teacher's and student's logits, tau the temperature (tau > 1 shows the
student how the teacher ranks the wrong answers, its "dark knowledge"), and tau^2 keeps the soft
term's gradients on the scale of the hard one's as tau grows. The student is a dsim.model with
fewer layers or fewer experts (`student_args`); the teacher runs without gradients.

    student = Transformer(student_args(teacher.args, n_routed_experts=4))
    losses = train_student(student, data, TrainConfig(steps=150), teacher=teacher, temperature=2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dsim.config import ModelArgs
from dsim.model import Transformer
from dsim.train import TrainConfig, get_batch, make_optimizer


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * cross-entropy, in nats.

    logits: [..., V]; targets: [...] token ids. alpha in [0, 1] (0: the hard loss alone).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature = {temperature!r} must be a finite number > 0")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha = {alpha!r} must be in [0, 1]")
    V = student_logits.size(-1)
    s, t = student_logits.reshape(-1, V).float(), teacher_logits.reshape(-1, V).float()
    hard = F.cross_entropy(s, targets.reshape(-1))
    if alpha == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def student_args(
    teacher: ModelArgs, n_layers: int | None = None, n_routed_experts: int | None = None
) -> ModelArgs:
    """The teacher's architecture with fewer layers and/or fewer routed experts (top-k kept, capped
    at the new expert count; expert groups dropped if they no longer divide it)."""
    changes: dict = {}
    if n_layers is not None:
        if not 1 <= n_layers <= teacher.n_layers:
            raise ValueError(f"n_layers = {n_layers} must be in [1, {teacher.n_layers}]")
        changes["n_layers"] = n_layers
        changes["n_dense_layers"] = min(teacher.n_dense_layers, n_layers - 1)
    if n_routed_experts is not None:
        if not 1 <= n_routed_experts <= teacher.n_routed_experts:
            raise ValueError(
                f"n_routed_experts = {n_routed_experts} must be in [1, {teacher.n_routed_experts}]"
            )
        changes["n_routed_experts"] = n_routed_experts
        changes["n_activated_experts"] = min(teacher.n_activated_experts, n_routed_experts)
        if n_routed_experts % teacher.n_expert_groups:
            changes["n_expert_groups"] = changes["n_limited_groups"] = 1
    return teacher.replace(**changes)


def train_student(
    student: Transformer,
    data: torch.Tensor,
    cfg: TrainConfig,
    teacher: Transformer | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> list[float]:
    """Train `student` for cfg.steps steps (a dsim.train.TrainConfig: batch, length, learning-rate
    schedule, clipping, seed) on random windows of `data`: with a teacher, on distill_loss; without
    one, on the next-token loss alone (the same student "trained alone", same batches).
    Returns the hard (next-token) loss of each step, in nats."""
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    opt = make_optimizer(student, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    student.train()
    hard_losses = []
    for step in range(cfg.steps):
        x, y = get_batch(data, cfg.batch_size, cfg.seq_len, gen)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step) * group["lr_mult"]
        logits = student(x)
        if teacher is None:
            loss = hard = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        else:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = distill_loss(logits, t_logits, y, temperature, alpha)
            hard = F.cross_entropy(logits.detach().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        hard_losses.append(hard.item())
    student.eval()
    return hard_losses
