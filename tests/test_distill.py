"""Distillation (dsim.distill): the loss, the student's shape, the training loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsim.config import preset
from dsim.distill import distill_loss, student_args, train_student
from dsim.model import Transformer
from dsim.train import TrainConfig


def test_loss_terms():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=gen), torch.randn(3, 5, 11, generator=gen)
    y = torch.randint(0, 11, (3, 5), generator=gen)
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    assert torch.allclose(distill_loss(s, t, y, 2.0, 0.0), ce)
    # a teacher equal to the student adds nothing
    assert torch.allclose(distill_loss(s, s, y, 3.0, 0.4), 0.6 * ce)
    # KL(p_t || p_s) at temperature tau, averaged over positions, times tau^2
    tau = 2.0
    p_t = (t / tau).softmax(-1)
    kl = (p_t * (p_t.log() - (s / tau).log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distill_loss(s, t, y, tau, 1.0), tau**2 * kl)


def test_student_args():
    teacher = preset("tiny")
    fewer = student_args(teacher, n_routed_experts=4)
    assert fewer.n_routed_experts == 4 and fewer.n_activated_experts == 2
    assert fewer.dim == teacher.dim and fewer.n_layers == teacher.n_layers
    one = student_args(teacher, n_layers=1)
    assert one.n_layers == 1 and one.n_dense_layers == 0 and one.is_moe
    n = sum(p.numel() for p in Transformer(teacher).parameters())
    assert sum(p.numel() for p in Transformer(fewer).parameters()) < n
    with pytest.raises(ValueError, match="n_layers"):
        student_args(teacher, n_layers=3)
    with pytest.raises(ValueError, match="n_routed_experts"):
        student_args(teacher, n_routed_experts=0)


def test_train_student_uses_the_teacher_and_leaves_it_alone():
    torch.manual_seed(0)
    teacher = Transformer(preset("tiny"))
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    data = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=32, warmup=1)
    runs = []
    for t in (None, teacher):
        torch.manual_seed(1)
        student = Transformer(student_args(teacher.args, n_routed_experts=4))
        runs.append((train_student(student, data, cfg, teacher=t), student))
    assert len(runs[0][0]) == 3
    assert runs[0][0][0] == runs[1][0][0]  # same initialisation and batch: same first loss
    w0, w1 = (r[1].head.weight for r in runs)
    assert not torch.equal(w0, w1)  # the teacher changed the updates
    for n, p in teacher.named_parameters():
        assert torch.equal(p, before[n]), n


def test_bad_input_is_refused():
    s = torch.zeros(2, 4)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, s, y, 0.0, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        distill_loss(s, s, y, 1.0, 1.5)


def test_committed_distill_run_agrees_with_the_code():
    """dsim/data/distill_cpu.json: every student's parameter count is dsim.cost.params' count of
    student_args(tiny, ...), and each student was run both ways."""
    import json
    from pathlib import Path

    from dsim.cost.params import params

    run = json.loads(
        (Path(__file__).resolve().parents[1] / "dsim/data/distill_cpu.json").read_text()
    )
    teacher = preset("tiny")
    assert run["rows"][0]["params"] == params(teacher).total
    for name, change in run["students"].items():
        rows = [r for r in run["rows"] if r["model"] == name]
        assert sorted(r["how"] for r in rows) == ["alone", "distilled"]
        assert all(r["params"] == params(student_args(teacher, **change)).total for r in rows)


def test_distill_script_cpu_path():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "distill_tiny.py"
    spec = importlib.util.spec_from_file_location("distill_tiny", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run(steps=2)
    assert [(r["model"], r.get("how")) for r in out["rows"]] == [
        ("teacher", None),
        ("experts4", "alone"),
        ("experts4", "distilled"),
        ("layers1", "alone"),
        ("layers1", "distilled"),
    ]
