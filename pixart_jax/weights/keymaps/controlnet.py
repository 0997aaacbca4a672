"""ControlNet-Transformer key map: the original repo's `.pth` layout (spec §4.5) -> our PixArtControlNet.

The wrapper's state dict is the base PixArt under `base_model.` (the keys of keymaps/pixart.py's ORIGINAL table),
the copied blocks under `controlnet.{k}.copied_block.` (the block keys), `controlnet.0.before_proj` and
`controlnet.{k}.after_proj`. `base_model.pos_embed` is the fixed-size class's stored position table (our
`pos_embed` buffer); the multi-scale class recomputes it, so there it is ignored on import.

DIFFUSERS_CONTROLNET names the same modules as the PyTorch wrapper around diffusers' transformer does
(pixart_jax/torch/controlnet.py): the wrapper's names with diffusers' inside (`controlnet.{k}.copied_block.attn1.to_q`),
which LoRA targets and adapter files of a ControlNet use.
"""
from pixart_jax.weights.keymaps.pixart import DIFFUSERS, ORIGINAL
from pixart_jax.weights.mapping import Rule

BASE_PREFIX, BRANCH_PREFIX = "base_model.", "controlnet."
_COPY = BRANCH_PREFIX + "{i}.copied_block."
_ZERO_LINEARS = [Rule("before_proj", BRANCH_PREFIX + "0.before_proj"),
                 Rule("after_proj", BRANCH_PREFIX + "{i}.after_proj")]


def _controlnet_rules(base_rules, block_prefix):
    """A ControlNet's rules from a transformer table: the base under base_model., copies of its block rules (sources
    starting with `block_prefix`) under controlnet.{i}.copied_block., and the zero linears."""
    return ([Rule(f"base.{r.ours}", tuple(BASE_PREFIX + s for s in r.sources), r.kind) for r in base_rules]
            + [Rule("copies" + r.ours[len("blocks"):], tuple(s.replace(block_prefix, _COPY) for s in r.sources),
                    r.kind) for r in base_rules if r.ours.startswith("blocks.")]
            + _ZERO_LINEARS)


ORIGINAL_CONTROLNET = (_controlnet_rules(ORIGINAL, "blocks.{i}.")
                       + [Rule("pos_embed", BASE_PREFIX + "pos_embed", "param")])
DIFFUSERS_CONTROLNET = _controlnet_rules(DIFFUSERS, "transformer_blocks.{i}.")
# Keys the multi-scale class never reads.
MS_IGNORED = (BASE_PREFIX + "pos_embed",)
# Keys the fixed-size class never reads: size embedders of a multi-scale base it was built around (the 512 app).
FIXED_SIZE_IGNORED_PREFIXES = (BASE_PREFIX + "csize_embedder.", BASE_PREFIX + "ar_embedder.")

# What marks a ControlNet checkpoint: our directory format's `_format`, the official constructor's class names (the
# `class` of a directory's config.json), and both prefixes in a state dict.
JAX_FORMAT = "pixart-jax-controlnet"
OFFICIAL_CLASSES = {"ControlPixArtHalf": False, "ControlPixArtMSHalf": True}  # class -> multi-scale


def is_controlnet_state_dict(state_dict):
    return (any(k.startswith(BRANCH_PREFIX) for k in state_dict)
            and any(k.startswith(BASE_PREFIX) for k in state_dict))


def is_controlnet_config(config):
    """A config.json dict of our ControlNet format or of the official constructor arguments."""
    return config.get("_format") == JAX_FORMAT or config.get("class") in OFFICIAL_CLASSES or "copy_blocks_num" in config
