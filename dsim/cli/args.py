"""What the user types: the one-line error, the parser that reports in one line, argument types
with their bounds (sizes with K/M/B/T suffixes, whole numbers, finite reals, KV-cache formats), the
sequence-length rule (at most the model's max_seq_len) and the --model argument (a preset name or a
Hugging Face config.json: a regular file of at most 1 MB, a model of at most 1024 blocks)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dsim.config import ModelArgs, preset, preset_names


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split(" ", 1)[-1] + ": " if " " in self.prog else ""
        print(f"dsim: error: {command}{message}", file=sys.stderr)
        raise SystemExit(2)


# Bounds on what the CLI takes, so that every command answers within seconds: a cluster of at
# most 2^20 GPUs (the planner searches the divisors of the count), and counts of sequences and
# tokens that float64 holds exactly (2^50: a global batch of 10^15 sequences), and token budgets
# of at most 10^21 (a thousand times the largest published runs).
MAX_GPUS = 1 << 20  # = dsim.cost.plan.job.MAX_GPUS
MAX_COUNT = 1 << 50
MAX_TOKENS = 1e21


def _amount(text: str, high: float) -> float:
    from dsim.cost.plan import parse_size

    try:
        value = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:,.0f}, got {text!r}")
    return value


def size(text: str) -> float:
    """argparse type: a positive amount with an optional K/M/B/T suffix (14.8T, 62.9M, 4096)."""
    return _amount(text, MAX_TOKENS)


def size_int(text: str) -> int:
    """argparse type: a whole positive count with an optional suffix (2k = 2000)."""
    value = _amount(text, MAX_COUNT)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def whole(low: int = 1, high: int = MAX_COUNT, suffix: bool = False):
    """argparse type: a whole number in [low, high] (with K/M/B/T suffixes if `suffix`)."""

    def parse(text: str) -> int:
        value = None
        try:
            value = int(text)
        except ValueError:
            if suffix:
                try:
                    value = size_int(text)
                except argparse.ArgumentTypeError:
                    pass
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number between {low} and {high:,}, got {text!r}"
            )
        return value

    parse.__name__ = "whole number"
    return parse


def real(low: float = 0.0, high: float = math.inf, strict: bool = False):
    """argparse type: a finite number >= low (> low if `strict`) and < high (nan, inf refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low and value < high) or (
            strict and value == low
        ):
            rel = ">" if strict else ">="
            bound = f" and < {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(
                f"must be a finite number {rel} {low:g}{bound}, got {text!r}"
            )
        return value

    parse.__name__ = "number"
    return parse


def dtype_arg(text: str) -> str | float:
    """argparse type for --kv-dtype: a format name (bf16, fp8, ...) or bits per element (6)."""
    from dsim.cost.dtypes import DTYPES, dtype_name

    try:
        bits = float(text)
    except ValueError:
        bits = None
    if bits is not None and 0 < bits <= 64:
        return bits
    if bits is None:
        try:
            return dtype_name(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(DTYPES)} or a number of bits per element in (0, 64], "
        f"got {text!r}"
    )


def check_length(args: ModelArgs, option: str, tokens: int) -> None:
    """Refuse a sequence longer than the model takes (its max_seq_len, as the model refuses it)."""
    if tokens > args.max_seq_len:
        raise UsageError(
            f"{option}: {tokens:,} tokens per sequence is past {args.name}'s "
            f"max_seq_len={args.max_seq_len:,} (the model refuses longer sequences)"
        )


def default_length(args: ModelArgs, given: int | None) -> int:
    """A sequence length the user gave, or 4096 capped at the model's max_seq_len."""
    return min(4096, args.max_seq_len) if given is None else given


# What the CLI takes from a config.json: a file of at most this many bytes (a Hugging Face config
# is a few KB), and a model of at most this many blocks (the cost models walk the blocks one by
# one; the deepest published MoE models have fewer than 100).
MAX_CONFIG_BYTES = 1 << 20
MAX_LAYERS = 1024


def load_model(spec: str) -> ModelArgs:
    """A preset or a config.json as ModelArgs, with every problem of the file reported as one line
    naming it (UsageError)."""
    try:
        args = load_model_args(spec)
    except KeyError as e:
        raise UsageError(
            f"--model {spec}: malformed config.json: a required key is missing ({e})"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"--model {spec}: not a text file (a config.json is UTF-8 JSON)") from None
    except ValueError as e:  # the reader names the field or the file
        raise UsageError(f"--model {spec}: {e}") from None
    except (TypeError, AttributeError) as e:
        raise UsageError(
            f"--model {spec}: malformed config.json ({type(e).__name__}: {e})"
        ) from None
    if args.n_layers > MAX_LAYERS:
        raise UsageError(
            f"--model {spec}: n_layers={args.n_layers} is more blocks than dsim's cost models take "
            f"(at most {MAX_LAYERS})"
        )
    return args


def config_file(spec: str) -> Path:
    """The config.json that --model names (a file, or a directory holding one): a regular file of at
    most MAX_CONFIG_BYTES, so that a device (/dev/zero) or a FIFO is refused, not read forever."""
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise UsageError(f"--model {spec}: config file not found: {path}")
    if not path.is_file():
        raise UsageError(f"--model {spec}: {path} is not a regular file (a config.json)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(
            f"--model {spec}: {path} has {size:,} bytes, more than a config.json "
            f"(at most {MAX_CONFIG_BYTES:,})"
        )
    return path


def load_model_args(spec: str) -> ModelArgs:
    """A preset name or a path to a Hugging Face config.json (a file or its directory)."""
    if spec.lower() in preset_names():
        return preset(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        return ModelArgs.from_hf_config(config_file(spec))
    raise UsageError(
        f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor a config.json path"
    )
