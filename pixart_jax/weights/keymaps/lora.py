"""LoRA adapter files: how their keys name a module and its A, B or alpha. The module names themselves are those of
the transformer key maps (keymaps/pixart.py): diffusers' paths, or the original repo's (`blocks.N.attn.qkv`)."""

# The target names of the PixArt repo's LoRA scripts (train_pixart_lora_hf.py, train_pixart_lcm_lora.py), matched
# as PEFT matches them: a module path equal to a name or ending in "." + name.
PIXART_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "proj",
                  "linear", "linear_1", "linear_2")
# Names those scripts list that PixArtTransformer2DModel has no module for (proj_in belongs to diffusers'
# Transformer2DModel with continuous inputs): PEFT matches nothing for them, and neither do we.
ABSENT_TARGETS = ("proj_in",)

# Key prefixes before the module path, longest first: PEFT's save_pretrained (base_model.model.), the PixArt
# script's pytorch_lora_weights.safetensors (unet.base_model.model.), diffusers' save_lora_weights (transformer.).
DOTTED_PREFIXES = ("transformer.base_model.model.", "unet.base_model.model.", "base_model.model.", "transformer.",
                   "unet.", "")
# kohya / OneTrainer: the module path with "." written as "_" after this prefix.
KOHYA_PREFIX = "lora_transformer_"
# Key suffixes after the module path -> which tensor: PEFT / diffusers and kohya spellings.
SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A", ".lora_up.weight": "B",
            ".alpha": "alpha"}

# PEFT's LoraConfig default, which files without alpha were trained with when they came from PEFT.
PEFT_DEFAULT_ALPHA = 8.0

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
