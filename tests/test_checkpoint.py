"""Checkpoints: safetensors only, bit-exact resume, and clear errors that
leave the trainer untouched."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import dsim.checkpoint as ckpt
from dsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_checkpoint
from dsim.config import preset
from dsim.train import TrainConfig, Trainer

torch.set_num_threads(1)

SMALL = dict(
    dim=32,
    inter_dim=64,
    moe_inter_dim=16,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    n_routed_experts=8,
    max_seq_len=64,
    original_seq_len=64,
    n_mtp_layers=1,
)
# Everything that carries state switched on: bias update, both losses, z-loss, MTP with
# a schedule (lambda 0 after step 5: the MTP weights then stop getting gradient),
# capacity dropping, evaluation.
CFG = TrainConfig(
    steps=8,
    batch_size=4,
    seq_len=32,
    warmup=2,
    max_train_bytes=100_000,
    bias_update_speed=0.01,
    seq_aux_alpha=1e-3,
    switch_aux_alpha=1e-3,
    z_loss=1e-4,
    mtp_lambda=0.3,
    mtp_lambda_schedule=((5, 0.0),),
    eval_every=4,
    eval_batches=1,
)


def args(**changes):
    return preset("tiny", **{**SMALL, "capacity_factor": 1.5, **changes})


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def halfway(tmp_path_factory) -> Path:
    trainer = Trainer(args(), CFG)
    trainer.run(4, progress=False)
    return save_checkpoint(trainer, tmp_path_factory.mktemp("ck") / "half.safetensors")


def test_resume_continues_the_exact_same_run(halfway, tmp_path):
    straight = Trainer(args(), CFG)
    straight.run(progress=False)
    resumed = load_checkpoint(halfway)
    assert resumed.step == 4 and len(resumed.history.loss) == 4
    resumed.run(progress=False)
    # resuming into an existing trainer (built from scratch, then loaded) works the same way
    into = Trainer(args(), CFG)
    load_checkpoint(halfway, into).run(progress=False)
    for run in (resumed, into):
        h, s = run.history, straight.history
        assert h.loss == s.loss and h.mtp_loss == s.mtp_loss and h.aux_loss == s.aux_loss
        assert h.imbalance == s.imbalance and h.dropped == s.dropped and h.val_bpb == s.val_bpb
        assert all((a == b).all() for a, b in zip(h.bias, s.bias))
        for key, value in straight.model.state_dict().items():
            assert torch.equal(run.model.state_dict()[key], value), key
    assert any(d > 0 for d in straight.history.dropped)  # the capacity limit was exercised
    # saving the resumed run and loading it again gives the same state
    again = load_checkpoint(save_checkpoint(resumed, tmp_path / "end.safetensors"))
    assert again.history.loss == straight.history.loss and again.step == CFG.steps


def test_the_file_is_plain_safetensors_with_json_metadata(halfway):
    with safe_open(str(halfway), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "dsim-checkpoint" and meta["step"] == "4"
    assert json.loads(meta["model_args"])["n_routed_experts"] == 8
    assert json.loads(meta["train_config"])["mtp_lambda_schedule"] == [[5, 0.0]]
    assert {
        "model/layers.1.ffn.gate.bias",
        "optim/embed.weight/exp_avg",
        "optim/embed.weight/exp_avg_sq",
        "optim/embed.weight/step",
        "rng/batches",
        "rng/torch",
        "history/loss",
        "history/load",
    } <= keys
    source = Path(ckpt.__file__).read_text()
    assert (
        "torch.save(" not in source
        and "torch.load(" not in source
        and "import pickle" not in source
    )


def test_a_different_model_is_refused_and_nothing_is_loaded(halfway):
    other = Trainer(args(n_routed_experts=16), CFG)
    other.run(1, progress=False)
    before, step = snapshot(other), other.step
    with pytest.raises(
        CheckpointError, match="different model: n_routed_experts=8 in the checkpoint but 16 here"
    ):
        load_checkpoint(halfway, other)
    assert other.step == step and all(
        torch.equal(v, before[k]) for k, v in other.model.state_dict().items()
    )


def rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of a checkpoint with its tensors/metadata edited and a valid checksum (a
    consistent but wrong file)."""
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    return write_checkpoint(tensors, meta, dst)


def test_wrong_shapes_inside_a_file_are_refused_before_copying(halfway, tmp_path):
    # Metadata says 16 experts, tensors hold 8: checked tensor by tensor
    # against the model it builds.
    def sixteen(tensors, meta):
        a = json.loads(meta["model_args"])
        a["n_routed_experts"] = 16
        meta["model_args"] = json.dumps(a)

    with pytest.raises(
        CheckpointError,
        match=r"model/layers.1.ffn.gate.weight has shape \[8, 32\].*expects shape \[16, 32\]",
    ):
        load_checkpoint(rewrite(halfway, tmp_path / "a.safetensors", sixteen))

    # The model tensors are fine but one optimizer moment has the wrong shape: the live trainer's
    # weights must stay as they were (validation happens before any copy).
    def bad_moment(tensors, meta):
        tensors["optim/head.weight/exp_avg"] = tensors["optim/head.weight/exp_avg"][:-1].clone()

    trainer = Trainer(args(), CFG)
    before = snapshot(trainer)
    with pytest.raises(CheckpointError, match="optim/head.weight/exp_avg has shape"):
        load_checkpoint(rewrite(halfway, tmp_path / "b.safetensors", bad_moment), trainer)
    assert trainer.step == 0 and all(
        torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items()
    )

    def missing(tensors, meta):
        del tensors["model/layers.1.ffn.gate.bias"]

    with pytest.raises(
        CheckpointError,
        match=r"model tensors do not match this model: missing \['layers.1.ffn.gate.bias'\]",
    ):
        load_checkpoint(rewrite(halfway, tmp_path / "c.safetensors", missing))

    def short_history(tensors, meta):
        tensors["history/loss"] = tensors["history/loss"][:2].clone()

    with pytest.raises(
        CheckpointError, match=r"history/loss must be a torch.float64 tensor of shape \[4\]"
    ):
        load_checkpoint(rewrite(halfway, tmp_path / "d.safetensors", short_history))


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate", "not a readable safetensors file"),
        ("header", "not a readable safetensors file"),
        ("flip", "is corrupted: its contents do not match the checksum"),
        ("empty", "not a readable safetensors file"),
    ],
)
def test_corrupted_or_truncated_files_are_refused(halfway, tmp_path, damage, match):
    raw = halfway.read_bytes()
    if damage == "truncate":
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "header":
        raw = raw[:8] + b'{"x": 1' + raw[15:]
    elif damage == "flip":
        i = len(raw) - 1000  # a byte of tensor data
        raw = raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :]
    else:
        raw = b""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw)
    trainer = Trainer(args(), CFG)
    before = snapshot(trainer)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad, trainer)
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_other_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="is not a dsim checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


def trainer_state(trainer: Trainer) -> tuple:
    """Everything a load replaces: weights, optimizer moments, both generators, step, history."""
    optim = {
        (i, k): v.clone()
        for i, s in trainer.optimizer.state_dict()["state"].items()
        for k, v in s.items()
    }
    return (
        snapshot(trainer),
        optim,
        trainer.generator.get_state().clone(),
        torch.get_rng_state().clone(),
        trainer.step,
        list(trainer.history.loss),
    )


def same_state(a: tuple, b: tuple) -> bool:
    (ma, oa, ga, ra, sa, ha), (mb, ob, gb, rb, sb, hb) = a, b
    return (
        ma.keys() == mb.keys()
        and all(torch.equal(ma[k], mb[k]) for k in ma)
        and oa.keys() == ob.keys()
        and all(torch.equal(oa[k], ob[k]) for k in oa)
        and torch.equal(ga, gb)
        and torch.equal(ra, rb)
        and (sa, ha) == (sb, hb)
    )


@pytest.mark.parametrize("key", ["rng/batches", "rng/torch"])
def test_an_invalid_generator_state_is_refused_before_anything_is_loaded(halfway, tmp_path, key):
    """Issue 19, defect 8: a checksum-valid file whose RNG state has the right size but is not a
    valid mt19937 state raised RuntimeError after the weights, the optimizer and the batch
    generator had been replaced. Now every part is checked first and the trainer is untouched."""

    def garbage(tensors, meta):
        tensors[key] = torch.zeros_like(tensors[key])

    bad = rewrite(halfway, tmp_path / "rng.safetensors", garbage)
    trainer = Trainer(args(), CFG)
    trainer.run(2, progress=False)
    before = trainer_state(trainer)
    with pytest.raises(CheckpointError, match=f"{key} is not a valid generator state"):
        load_checkpoint(bad, trainer)
    assert same_state(trainer_state(trainer), before)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names file descriptors via /proc")
def test_saves_are_fsynced_around_the_rename(halfway, tmp_path, monkeypatch):
    """Issue 19, defect 9: the file is fsync'ed before the rename and the directory after it, so a
    power cut leaves the old checkpoint or the new one, both complete."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with safe_open(str(halfway), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    dst = tmp_path / "durable.safetensors"
    write_checkpoint(tensors, meta, dst)
    tmp, final, folder = str(dst) + ".tmp", str(dst), str(tmp_path)
    assert events == [("fsync", tmp), ("replace", tmp, final), ("fsync", folder)]
    assert load_checkpoint(dst).step == 4


def test_saving_onto_a_directory_or_failing_midway_leaves_no_temporary_file(halfway, tmp_path):
    """Issue 19, defect 9: saving onto a directory wrote a full-size <dir>.tmp and left it there;
    loading a directory said "file not found"."""
    trainer = load_checkpoint(halfway)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(trainer, folder)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder"]
    # a write that fails halfway (here: the disk is full) removes its temporary file and leaves
    # the previous checkpoint as it was
    target = save_checkpoint(trainer, tmp_path / "run.safetensors")
    before = target.read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    import os

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", full)
        with pytest.raises(OSError, match="No space left"):
            save_checkpoint(trainer, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "run.safetensors"]
    assert target.read_bytes() == before
