"""What the user types: the one-line error, the parser that reports in one line, size arguments
with K/M/B/T suffixes and the --model argument (a preset name or a Hugging Face config.json)."""

from __future__ import annotations

import argparse
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


def size(text: str) -> float:
    """argparse type: a positive count with an optional K/M/B/T suffix (14.8T, 62.9M, 4096)."""
    from dsim.cost.plan import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size_int(text: str) -> int:
    """argparse type: a whole positive count with an optional suffix (2k = 2000)."""
    value = size(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def load_model(spec: str) -> ModelArgs:
    """load_model_args, with a malformed config.json reported as one line."""
    try:
        return load_model_args(spec)
    except KeyError as e:
        raise UsageError(
            f"--model {spec}: malformed config.json: a required key is missing ({e})"
        ) from None
    except (TypeError, AttributeError) as e:
        raise UsageError(
            f"--model {spec}: malformed config.json ({type(e).__name__}: {e})"
        ) from None


def load_model_args(spec: str) -> ModelArgs:
    """A preset name or a path to a Hugging Face config.json."""
    if spec.lower() in preset_names():
        return preset(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        return ModelArgs.from_hf_config(path)
    raise UsageError(
        f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor a config.json path"
    )
