"""T5 encoder key map: Hugging Face `T5EncoderModel` / `T5ForConditionalGeneration` safetensors -> our T5Encoder."""
from pixart_jax.weights.mapping import Rule

# One encoder block, relative to `blocks.{i}` (ours) and `encoder.block.{i}` (source). Both feed-forward layouts
# are listed (gated `wi_0`/`wi_1` of v1.1, plain `wi` of v1.0): rules for parameters the model lacks are skipped.
BLOCK = [
    ("attn_norm.scale", "layer.0.layer_norm.weight", "param"),
    ("attn.q", "layer.0.SelfAttention.q", "linear_nobias"),
    ("attn.k", "layer.0.SelfAttention.k", "linear_nobias"),
    ("attn.v", "layer.0.SelfAttention.v", "linear_nobias"),
    ("attn.o", "layer.0.SelfAttention.o", "linear_nobias"),
    ("ff_norm.scale", "layer.1.layer_norm.weight", "param"),
    ("ff.wi_0", "layer.1.DenseReluDense.wi_0", "linear_nobias"),
    ("ff.wi_1", "layer.1.DenseReluDense.wi_1", "linear_nobias"),
    ("ff.wi", "layer.1.DenseReluDense.wi", "linear_nobias"),
    ("ff.wo", "layer.1.DenseReluDense.wo", "linear_nobias"),
]

SHARED_EMBED = "shared.weight"  # the tied input embedding
GLOBAL = [
    Rule("embed.embedding", SHARED_EMBED, "param"),
    # Only the first block owns the relative-position table; every block reuses the bias it yields.
    Rule("relative_attention_bias.embedding", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "param"),
    Rule("final_norm.scale", "encoder.final_layer_norm.weight", "param"),
]

# The encoder's copy of the tied input embedding: some checkpoints store it beside `shared.weight`.
ENCODER_EMBED = "encoder.embed_tokens.weight"
# Keys of full encoder-decoder checkpoints that an encoder does not use.
DECODER_PREFIXES = ("decoder.", "lm_head.")
# An int8 T5 (pixart_jax.weights.t5_int8): each linear's `weight` holds int8 codes (out, in) and `weight_scale` its
# float32 per-output-channel scales (out,); config.json marks the folder with INT8_CONFIG_KEY: INT8_FORMAT.
INT8_SCALE = "weight_scale"
INT8_CONFIG_KEY = "pixart_jax_quantization"
INT8_FORMAT = "int8 weight-only, per output channel, scale = max|w| / 127"


def block_rules(i):
    """The rules of encoder block `i`."""
    return [Rule(f"blocks.{i}.{ours}", f"encoder.block.{i}.{source}", kind) for ours, source, kind in BLOCK]


def t5_rules(num_layers):
    """The rules for an encoder of `num_layers` blocks."""
    return GLOBAL + [rule for i in range(num_layers) for rule in block_rules(i)]
