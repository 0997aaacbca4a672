"""AutoencoderKL key map: a diffusers `vae/` safetensors file -> our AutoencoderKL (pixart_jax.models.vae).

Our module tree keeps diffusers' names except where a list of one (`downsamplers.0`, `attentions.0`, `to_out.0`)
becomes a single attribute. Rules are listed for every optional part (shortcut convs, resamplers, attention,
quant convs); those the configured model does not have are skipped, and a checkpoint that has them fails as
"unexpected key".
"""
from pixart_jax.weights.mapping import Rule

# (ours, source, kind) relative to one resnet block; kind "norm" is a GroupNorm (weight -> scale, bias -> bias).
RESNET = [
    ("norm1", "norm1", "norm"),
    ("conv1", "conv1", "conv"),
    ("norm2", "norm2", "norm"),
    ("conv2", "conv2", "conv"),
    ("conv_shortcut", "conv_shortcut", "conv"),
]

# The mid-block self-attention, relative to `mid_block.attention` / `mid_block.attentions.0`: current diffusers
# names, and the names of checkpoints saved before diffusers 0.14 (which diffusers still renames on load).
ATTENTION = [
    ("norm", "group_norm", "norm"),
    ("to_q", "to_q", "linear"),
    ("to_k", "to_k", "linear"),
    ("to_v", "to_v", "linear"),
    ("to_out", "to_out.0", "linear"),
]
LEGACY_ATTENTION = [
    ("norm", "group_norm", "norm"),
    ("to_q", "query", "linear"),
    ("to_k", "key", "linear"),
    ("to_v", "value", "linear"),
    ("to_out", "proj_attn", "linear"),
]
LEGACY_MARKER = "mid_block.attentions.0.query.weight"


def _expand(ours, source, table):
    rules = []
    for our_name, source_name, kind in table:
        if kind == "norm":
            rules += [Rule(f"{ours}.{our_name}.scale", f"{source}.{source_name}.weight", "param"),
                      Rule(f"{ours}.{our_name}.bias", f"{source}.{source_name}.bias", "param")]
        else:
            rules.append(Rule(f"{ours}.{our_name}", f"{source}.{source_name}", kind))
    return rules


def _mid_block(side, attention):
    rules = [r for i in range(2) for r in _expand(f"{side}.mid_block.resnets.{i}",
                                                  f"{side}.mid_block.resnets.{i}", RESNET)]
    return rules + _expand(f"{side}.mid_block.attention", f"{side}.mid_block.attentions.0", attention)


def vae_rules(num_blocks, layers_per_block, legacy_attention=False):
    """Rules for a VAE with `num_blocks` resolution levels of `layers_per_block` resnets (decoder: one more)."""
    attention = LEGACY_ATTENTION if legacy_attention else ATTENTION
    rules = [Rule("quant_conv", "quant_conv", "conv"), Rule("post_quant_conv", "post_quant_conv", "conv")]
    for side, blocks, resnets, resampler, resampler_source in (
            ("encoder", "down_blocks", layers_per_block, "downsample", "downsamplers.0.conv"),
            ("decoder", "up_blocks", layers_per_block + 1, "upsample", "upsamplers.0.conv")):
        rules += [Rule(f"{side}.conv_in", f"{side}.conv_in", "conv"),
                  Rule(f"{side}.conv_out", f"{side}.conv_out", "conv")]
        rules += _expand(side, side, [("norm_out", "conv_norm_out", "norm")])
        rules += _mid_block(side, attention)
        for b in range(num_blocks):
            ours, source = f"{side}.{blocks}.{b}", f"{side}.{blocks}.{b}"
            rules += [r for i in range(resnets) for r in _expand(f"{ours}.resnets.{i}", f"{source}.resnets.{i}",
                                                                 RESNET)]
            rules.append(Rule(f"{ours}.{resampler}", f"{source}.{resampler_source}", "conv"))
    return rules
