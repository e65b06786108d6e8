"""Reading one `config.json` object strictly: every key typed, every missing size an error.

`Keys` wraps the parsed dict of one config (or of a nested part, such as DBRX's `attn_config`).
Each accessor names the key in its error and remembers that the key was read; `finish` then
refuses every key that was neither read nor listed in `IGNORED`, so a key that would change the
architecture can never be dropped without a word.

A missing required key, `null`, a boolean or a string where a size belongs, and a fractional size
are all ValueErrors naming the key. Defaults exist only where the format's own reader
(transformers' config class, or DeepSeek's `ModelArgs`) has one for a behaviour switch; sizes have
none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

# Keys that carry no architecture: bookkeeping, tokens, training-only settings (dropout, auxiliary
# losses, router jitter, initialisation), caching and serving hints, storage formats. Each is
# accepted in any family and ignored.
IGNORED: frozenset[str] = frozenset(
    {
        # bookkeeping
        "_name_or_path",
        "architectures",
        "auto_map",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "id2label",
        "label2id",
        "return_dict",
        "tokenizer_class",
        "use_bfloat16",
        # transformers' PretrainedConfig attributes that `to_dict()` writes into every config and
        # sub-config (DBRX's attn_config and ffn_config among them): outputs and generation
        # defaults, never the architecture
        "output_hidden_states",
        "output_attentions",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "problem_type",
        "max_length",
        "min_length",
        "do_sample",
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "length_penalty",
        # special tokens
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        # training only
        "initializer_range",
        "attention_dropout",
        "attn_pdrop",
        "resid_pdrop",
        "emb_pdrop",
        "aux_loss_alpha",
        "seq_aux",
        "output_router_logits",
        "router_aux_loss_coef",
        "router_z_loss_coef",
        "router_jitter_noise",
        "moe_jitter_eps",
        "moe_loss_weight",
        # serving and kernels: the same function, computed differently
        "use_cache",
        "pretraining_tp",  # Llama: split matmuls, same result
        "ep_size",  # DeepSeek: expert parallelism of the original code
        "quantization_config",  # storage format of the weights (FP8 blocks, MXFP4), not the math
        "quantization",  # MLX's storage format (group size, bits), likewise
        "scale_fmt",  # DeepSeek native: FP8 scale rounding of the reference kernels
    }
)


class _Missing:
    pass


MISSING: Any = _Missing()


class Keys:
    """Typed, recorded access to the keys of one config object (`where` names it in errors)."""

    def __init__(self, cfg: dict[str, Any], where: str = "config.json"):
        if not isinstance(cfg, dict):
            raise ValueError(f"{where} must be a JSON object, got {type(cfg).__name__}")
        self.cfg, self.where, self.read = cfg, where, set[str]()

    def has(self, key: str) -> bool:
        return key in self.cfg

    def raw(self, key: str, default: Any = MISSING) -> Any:
        """The value as written (None for null); a missing key without a default is an error."""
        self.read.add(key)
        if key not in self.cfg:
            if default is MISSING:
                raise ValueError(f"{self.where}: required key {key!r} is missing")
            return default
        return self.cfg[key]

    def _bad(self, key: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"{self.where}: {key} = {value!r} is invalid: must be {allowed}")

    def int(self, key: str, default: Any = MISSING, minimum: int = 0, null: Any = MISSING) -> int:
        """An integer >= minimum; `null` (if given) is what a JSON null means for this key."""
        value = self.raw(key, default)
        if value is None and null is not MISSING:
            return null
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(key, value, f"an integer >= {minimum}")
        return value

    def number(self, key: str, default: Any = MISSING, positive: bool = True) -> float:
        """A finite number (> 0 when positive)."""
        value = self.raw(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or (positive and value <= 0):
            raise self._bad(key, value, "a finite number" + (" > 0" if positive else ""))
        return float(value)

    def flag(self, key: str, default: Any = MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def choice(self, key: str, allowed: Iterable[Any], default: Any = MISSING) -> Any:
        """One of `allowed`; any other value is refused as unsupported, naming the key."""
        allowed = tuple(allowed)
        value = self.raw(key, default)
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
            raise ValueError(
                f"{self.where}: {key} = {value!r} is not supported: dsim reads "
                f"{' or '.join(repr(a) for a in allowed)}"
            )
        return value

    def nested(self, key: str, default: Any = MISSING) -> Keys:
        """A sub-object (DBRX's attn_config, a rope_scaling dict) as its own Keys."""
        value = self.raw(key, default)
        return Keys(value, f"{self.where}: {key}")

    def ignore(self, *keys: str) -> None:
        """Mark keys as read (they change nothing in this configuration)."""
        self.read.update(keys)

    def finish(self) -> None:
        """Refuse every key that was neither read nor listed in IGNORED."""
        unknown = sorted(k for k in self.cfg if k not in self.read and k not in IGNORED)
        if unknown:
            raise ValueError(
                f"{self.where} has unknown key(s) {', '.join(unknown)}: dsim refuses a key it "
                "does not read rather than ignore what may change the architecture"
            )
