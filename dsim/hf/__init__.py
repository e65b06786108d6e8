"""Hugging Face transformers' DeepSeek-V3 (`DeepseekV3ForCausalLM`) and dsim, one concept per
module:

    config   config.json <-> ModelArgs (args_from_hf_config, behind ModelArgs.from_hf_config;
             hf_config, the DeepseekV3Config keywords of a ModelArgs)
    weights  weight names and shapes (from_hf_state_dict)
"""

from dsim.hf.config import args_from_hf_config, hf_config
from dsim.hf.weights import from_hf_state_dict

__all__ = ["args_from_hf_config", "from_hf_state_dict", "hf_config"]
