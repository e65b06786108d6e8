"""Hugging Face transformers' model families and dsim, one concept per module:

config    config.json (or DeepSeek's native config) -> ModelArgs (args_from_hf_config, behind
          ModelArgs.from_hf_config); hf_config, the DeepseekV3Config keywords of a ModelArgs
families  one reader per family (DeepSeek, Kimi-K2, Llama, Mistral, Mixtral, Qwen2/3-MoE,
          OLMoE, gpt-oss, GLM-4.5, DBRX, DeepSeek native)
keys      strict typed access to a config's keys; the documented list of ignored keys
weights   weight names, shapes and RoPE layout (from_hf_state_dict)
"""

from dsim.hf.config import args_from_hf_config, hf_config, supported_families
from dsim.hf.weights import from_hf_state_dict

__all__ = ["args_from_hf_config", "from_hf_state_dict", "hf_config", "supported_families"]
