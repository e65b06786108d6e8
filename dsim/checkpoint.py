"""Checkpoints of a training run as one safetensors file: no pickle, bit-exact resume.

`torch.save` pickles Python objects, and unpickling a file can run arbitrary code; a safetensors
file holds only named tensors plus a string-to-string header, so loading one is safe. Everything a
`dsim.train.Trainer` needs to continue exactly where it stopped goes into one file:

    tensors
      model/<name>                  every entry of model.state_dict(): weights and the gates' biases
      optim/<param>/exp_avg         AdamW first moment of a parameter        (the parameter's shape)
      optim/<param>/exp_avg_sq      AdamW second moment                      (the parameter's shape)
      optim/<param>/step            AdamW's step count for it                (0-dim float32)
      rng/batches                   the Trainer's batch generator state      (uint8)
      rng/torch                     torch's global CPU generator state       (uint8)
      history/<field>               the History's per-step lists as tensors
    metadata (strings)
      format, version, step, model_args (JSON), train_config (JSON), optimizer (JSON: each param
      group's name and parameter names), optim_params (JSON: parameters with optimizer state),
      data_bytes/data_sha256 (the training text), sha256 (of all tensors and metadata)

Loading validates everything first (readable file, checksum, JSON, ModelArgs, every name, shape
and dtype against the live model and optimizer) and only then copies into the Trainer, so a bad
file raises `CheckpointError` naming the problem and leaves nothing half-loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from dsim import balance
from dsim.config import ModelArgs
from dsim.train import History, TrainConfig, Trainer

FORMAT = "dsim-checkpoint"
VERSION = "1"

# History fields and how each is stored: (dtype, per-step shape kind)
_HISTORY_SCALARS = {
    "loss": torch.float64,
    "mtp_loss": torch.float64,
    "aux_loss": torch.float64,
    "imbalance": torch.float64,
    "entropy": torch.float64,
    "dropped": torch.int64,
}
_HISTORY_ARRAYS = ("load", "bias")  # [steps, layers, E] float32
_HISTORY_FIELDS = set(_HISTORY_SCALARS) | set(_HISTORY_ARRAYS) | {"val_bpb"}
assert _HISTORY_FIELDS == {f.name for f in dataclasses.fields(History)}, (
    "History changed: update checkpoint.py"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, corrupted, or written for another model."""


# ------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------
def save_checkpoint(trainer: Trainer, path: str | Path) -> Path:
    """Write the trainer's full state to `path` (safetensors). Written to a temporary file and
    renamed, so an interrupted save never leaves a truncated checkpoint under the final name."""
    path = Path(path)
    model, opt = trainer.model, trainer.optimizer
    names = _param_names(trainer)
    tensors: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        tensors[f"model/{key}"] = (
            t.detach().cpu().contiguous().clone()
        )  # clone: tied weights share storage
    optim_params = []
    for p in _optimizer_params(opt):
        state = opt.state.get(p, {})
        if not state:
            continue  # never stepped (e.g. MTP weights while lambda = 0)
        optim_params.append(names[id(p)])
        for key, value in state.items():
            if not torch.is_tensor(value):
                raise CheckpointError(
                    f"optimizer state {names[id(p)]}/{key} is a {type(value).__name__}, "
                    "not a tensor: only AdamW's tensor state is supported"
                )
            tensors[f"optim/{names[id(p)]}/{key}"] = value.detach().cpu().contiguous().clone()
    tensors["rng/batches"] = trainer.generator.get_state().clone()
    tensors["rng/torch"] = torch.get_rng_state().clone()
    tensors.update(_history_tensors(trainer))
    groups = [
        {"name": g.get("name", str(i)), "params": [names[id(p)] for p in g["params"]]}
        for i, g in enumerate(opt.param_groups)
    ]
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "step": str(trainer.step),
        "model_args": json.dumps(trainer.args.to_dict()),
        "train_config": json.dumps(trainer.cfg.to_dict()),
        "optimizer": json.dumps({"type": type(opt).__name__, "param_groups": groups}),
        "optim_params": json.dumps(optim_params),
        "data_bytes": str(trainer.data.numel()),
        "data_sha256": _data_digest(trainer.data),
        "torch_version": torch.__version__,
    }
    return write_checkpoint(tensors, metadata, path)


def write_checkpoint(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path
) -> Path:
    """Low level: add the checksum to `metadata` and write atomically and durably.

    The bytes go to `<path>.tmp`, which is fsync'ed, renamed over `path` (atomic: a reader sees
    the old file or the new one, never half of one), and the directory is fsync'ed so that the
    rename itself survives a power cut. A failed write removes the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a checkpoint to {path}: it is a directory")
    metadata = {k: v for k, v in metadata.items() if k != "sha256"}
    metadata["sha256"] = checkpoint_digest(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(save(tensors, metadata=metadata))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename) to disk. POSIX only: elsewhere a no-op."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry but sha256
    itself.

    safetensors has no checksum of its own: a flipped bit in the data would load silently."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    for key in sorted(metadata):
        if key != "sha256":
            h.update(f"{key}={metadata[key]}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint file read and checked for integrity, not yet matched against a model."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    args: ModelArgs
    cfg: TrainConfig
    step: int


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file and check it: safetensors structure, format, checksum, JSON,
    configs."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupted or truncated?): "
            f"{type(e).__name__}: {e}"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a dsim checkpoint (metadata format={metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    if metadata.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {metadata.get('version')!r}; this dsim reads "
            f"version {VERSION!r}"
        )
    expected = metadata.get("sha256")
    if expected is None:
        raise CheckpointError(f"{path} has no sha256 in its metadata")
    actual = checkpoint_digest(tensors, metadata)
    if actual != expected:
        raise CheckpointError(
            f"{path} is corrupted: its contents do not match the checksum written with "
            f"them (sha256 {actual[:12]}... != {expected[:12]}...)"
        )
    try:
        step = int(metadata["step"])
        args = ModelArgs(**json.loads(metadata["model_args"]))
        cfg = TrainConfig.from_dict(json.loads(metadata["train_config"]))
        json.loads(metadata["optimizer"]), json.loads(metadata["optim_params"])
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the metadata entry {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has invalid metadata: {e}") from None
    if step < 0:
        raise CheckpointError(f"{path} has step = {step}: must be >= 0")
    return Checkpoint(path, tensors, metadata, args, cfg, step)


def load_checkpoint(path: str | Path, trainer: Trainer | None = None) -> Trainer:
    """Resume a run: a new Trainer built from the checkpoint's ModelArgs and TrainConfig, or, when
    `trainer` is given, that Trainer (its ModelArgs must equal the checkpoint's; its own TrainConfig
    is kept, so that a run can be extended with more steps).

    Restores the model's weights and gate biases, AdamW's moments and step counts, the batch
    generator and torch's global RNG, the step counter and the History: the resumed run then
    produces the same losses, bit for bit, as a run that never stopped (same machine and threads).
    Raises CheckpointError (nothing changed) when the file is unreadable, corrupted or written for
    another model.
    """
    ck = read_checkpoint(path)
    if trainer is None:
        trainer = Trainer(ck.args, ck.cfg)
    elif trainer.args != ck.args:
        diff = [
            f"{f.name}={getattr(ck.args, f.name)!r} in the checkpoint "
            f"but {getattr(trainer.args, f.name)!r} here"
            for f in dataclasses.fields(ModelArgs)
            if f.compare and getattr(ck.args, f.name) != getattr(trainer.args, f.name)
        ]
        raise CheckpointError(f"{ck.path} was written for a different model: {'; '.join(diff)}")
    plan = _plan(ck, trainer)  # every check; raises before anything is copied
    _apply(plan, trainer)
    if ck.metadata.get("data_sha256") != _data_digest(trainer.data):
        warnings.warn(
            f"{ck.path} was trained on different text ({ck.metadata.get('data_bytes')} bytes then, "
            f"{trainer.data.numel()} now): the resumed run will not repeat the original batches",
            stacklevel=2,
        )
    return trainer


@dataclass
class _Plan:
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any]
    rng_batches: torch.Tensor
    rng_torch: torch.Tensor
    step: int
    history: History


def _plan(ck: Checkpoint, trainer: Trainer) -> _Plan:
    """Match the checkpoint against the live trainer; build what to copy. Raises CheckpointError."""
    t, where = ck.tensors, ck.path
    # --- model ---
    live = trainer.model.state_dict()
    saved = {k[len("model/") :]: v for k, v in t.items() if k.startswith("model/")}
    _same_keys(where, "model tensors", saved, live)
    for key, ref in live.items():
        _same_tensor_kind(where, f"model/{key}", saved[key], ref)
    # --- optimizer ---
    opt = trainer.optimizer
    names = _param_names(trainer)
    groups = json.loads(ck.metadata["optimizer"])["param_groups"]
    live_groups = [
        {"name": g.get("name", str(i)), "params": [names[id(p)] for p in g["params"]]}
        for i, g in enumerate(opt.param_groups)
    ]
    if groups != live_groups:
        raise CheckpointError(
            f"{where}: the optimizer's parameter groups differ from this trainer's "
            f"({[(g['name'], len(g['params'])) for g in groups]} in the checkpoint, "
            f"{[(g['name'], len(g['params'])) for g in live_groups]} here)"
        )
    with_state = json.loads(ck.metadata["optim_params"])
    params = {names[id(p)]: p for p in _optimizer_params(opt)}
    unknown = [n for n in with_state if n not in params]
    if unknown:
        raise CheckpointError(
            f"{where}: optimizer state for unknown parameter(s) {', '.join(unknown[:5])}"
        )
    expected_keys = {
        f"optim/{n}/{k}" for n in with_state for k in ("exp_avg", "exp_avg_sq", "step")
    }
    saved_keys = {k for k in t if k.startswith("optim/")}
    if saved_keys != expected_keys:
        missing, extra = sorted(expected_keys - saved_keys), sorted(saved_keys - expected_keys)
        raise CheckpointError(
            f"{where}: optimizer tensors do not match: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    index = {names[id(p)]: i for i, p in enumerate(_optimizer_params(opt))}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for n in with_state:
        p = params[n]
        for k in ("exp_avg", "exp_avg_sq"):
            _same_tensor_kind(where, f"optim/{n}/{k}", t[f"optim/{n}/{k}"], p.detach())
        step = t[f"optim/{n}/step"]
        if step.dim() != 0 or not step.is_floating_point():
            raise CheckpointError(
                f"{where}: optim/{n}/step must be a 0-dim float tensor, got "
                f"{step.dtype} of shape {list(step.shape)}"
            )
        state[index[n]] = {
            "step": step.clone(),
            "exp_avg": t[f"optim/{n}/exp_avg"].clone(),
            "exp_avg_sq": t[f"optim/{n}/exp_avg_sq"].clone(),
        }
    optim_state = {
        "state": state,
        "param_groups": [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [index[names[id(p)]] for p in g["params"]],
            }
            for g in opt.param_groups
        ],
    }
    # --- random number generators ---
    for key, ref in (
        ("rng/batches", trainer.generator.get_state()),
        ("rng/torch", torch.get_rng_state()),
    ):
        if key not in t:
            raise CheckpointError(f"{where}: missing tensor {key}")
        _same_tensor_kind(where, key, t[key], ref)
        try:  # right size and dtype is not enough: an invalid state raises in set_state
            torch.Generator().set_state(t[key])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{where}: {key} is not a valid generator state ({e})") from None
    # --- history ---
    history = _history_from(ck, trainer)
    return _Plan(
        model_state={k: v.clone() for k, v in saved.items()},
        optim_state=optim_state,
        rng_batches=t["rng/batches"].clone(),
        rng_torch=t["rng/torch"].clone(),
        step=ck.step,
        history=history,
    )


def _apply(plan: _Plan, trainer: Trainer) -> None:
    """Copy a checked plan into the trainer (nothing here is expected to fail)."""
    with torch.no_grad():
        trainer.model.load_state_dict(plan.model_state, strict=True)
    trainer.optimizer.load_state_dict(plan.optim_state)
    trainer.generator.set_state(plan.rng_batches)
    torch.set_rng_state(plan.rng_torch)
    trainer.step = plan.step
    trainer.history = plan.history
    for moe in trainer.model.moe_layers():
        moe.routing = None


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _param_names(trainer: Trainer) -> dict[int, str]:
    """id(parameter) -> its first name in the model (tied parameters appear once)."""
    return {id(p): n for n, p in trainer.model.named_parameters()}


def _optimizer_params(opt: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


def _data_digest(data: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(data.contiguous().view(torch.uint8).numpy())).hexdigest()


def _same_keys(where: Path, what: str, saved: dict[str, Any], live: dict[str, Any]) -> None:
    missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    if missing or extra:
        raise CheckpointError(
            f"{where}: {what} do not match this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )


def _same_tensor_kind(where: Path, key: str, saved: torch.Tensor, ref: torch.Tensor) -> None:
    if saved.shape != ref.shape or saved.dtype != ref.dtype:
        raise CheckpointError(
            f"{where}: {key} has shape {list(saved.shape)} and dtype {saved.dtype} in the "
            f"checkpoint, but this model expects shape {list(ref.shape)} and dtype {ref.dtype}"
        )


def _history_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    h, out = trainer.history, {}
    for name, dtype in _HISTORY_SCALARS.items():
        out[f"history/{name}"] = torch.tensor(getattr(h, name), dtype=dtype)
    L, E = _load_shape(trainer)
    for name in _HISTORY_ARRAYS:
        rows = getattr(h, name)
        arr = np.stack(rows).astype(np.float32) if rows else np.zeros((0, L, E), dtype=np.float32)
        out[f"history/{name}"] = torch.from_numpy(np.ascontiguousarray(arr))
    out["history/val_bpb"] = torch.tensor(h.val_bpb, dtype=torch.float64).reshape(-1, 2)
    return out


def _load_shape(trainer: Trainer) -> tuple[int, int]:
    L = len(balance.main_moe_layers(trainer.model))
    return L, (trainer.args.n_routed_experts if L else 0)


def _history_from(ck: Checkpoint, trainer: Trainer) -> History:
    t, n, where = ck.tensors, ck.step, ck.path
    values: dict[str, Any] = {}
    for name, dtype in _HISTORY_SCALARS.items():
        x = t.get(f"history/{name}")
        if x is None or x.dtype != dtype or x.shape != (n,):
            raise CheckpointError(
                f"{where}: history/{name} must be a {dtype} tensor of shape [{n}] (one per step), "
                f"got {None if x is None else (x.dtype, list(x.shape))}"
            )
        values[name] = x.tolist()
    L, E = _load_shape(trainer)
    for name in _HISTORY_ARRAYS:
        x = t.get(f"history/{name}")
        if x is None or x.dtype != torch.float32 or x.shape != (n, L, E):
            raise CheckpointError(
                f"{where}: history/{name} must be a float32 tensor of shape [{n}, {L}, {E}], "
                f"got {None if x is None else (x.dtype, list(x.shape))}"
            )
        arr = x.numpy()
        values[name] = [arr[i].copy() for i in range(n)]
    v = t.get("history/val_bpb")
    if v is None or v.dtype != torch.float64 or v.dim() != 2 or v.shape[1] != 2:
        raise CheckpointError(
            f"{where}: history/val_bpb must be a float64 tensor of shape [evaluations, 2]"
        )
    values["val_bpb"] = [(int(s), float(b)) for s, b in v.tolist()]
    return History(**values)
