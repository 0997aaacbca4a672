"""PixArt transformer key maps: the original repo's `.pth` layout and diffusers' (as diffusers'
`scripts/convert_pixart_alpha_to_diffusers.py` maps them)."""
from pixart_jax.weights.mapping import Rule

ORIGINAL = [
    Rule("x_embedder", "x_embedder.proj", "conv"),
    Rule("t_embedder.fc1", "t_embedder.mlp.0"),
    Rule("t_embedder.fc2", "t_embedder.mlp.2"),
    Rule("csize_embedder.fc1", "csize_embedder.mlp.0"),
    Rule("csize_embedder.fc2", "csize_embedder.mlp.2"),
    Rule("ar_embedder.fc1", "ar_embedder.mlp.0"),
    Rule("ar_embedder.fc2", "ar_embedder.mlp.2"),
    Rule("t_block", "t_block.1"),
    Rule("y_proj.fc1", "y_embedder.y_proj.fc1"),
    Rule("y_proj.fc2", "y_embedder.y_proj.fc2"),
    Rule("y_embedding", "y_embedder.y_embedding", "param"),
    Rule("blocks.scale_shift_table", "blocks.{i}.scale_shift_table", "param"),
    Rule("blocks.attn.qkv", "blocks.{i}.attn.qkv"),
    Rule("blocks.attn.proj", "blocks.{i}.attn.proj"),
    Rule("blocks.cross_attn.q", "blocks.{i}.cross_attn.q_linear"),
    Rule("blocks.cross_attn.kv", "blocks.{i}.cross_attn.kv_linear"),
    Rule("blocks.cross_attn.proj", "blocks.{i}.cross_attn.proj"),
    Rule("blocks.mlp.fc1", "blocks.{i}.mlp.fc1"),
    Rule("blocks.mlp.fc2", "blocks.{i}.mlp.fc2"),
    Rule("final_layer.scale_shift_table", "final_layer.scale_shift_table", "param"),
    Rule("final_layer.linear", "final_layer.linear"),
]
# Buffers saved in original checkpoints that are recomputed, never loaded.
ORIGINAL_IGNORED = ("pos_embed",)

_B = "transformer_blocks.{i}"
DIFFUSERS = [
    Rule("x_embedder", "pos_embed.proj", "conv"),
    Rule("t_embedder.fc1", "adaln_single.emb.timestep_embedder.linear_1"),
    Rule("t_embedder.fc2", "adaln_single.emb.timestep_embedder.linear_2"),
    Rule("csize_embedder.fc1", "adaln_single.emb.resolution_embedder.linear_1"),
    Rule("csize_embedder.fc2", "adaln_single.emb.resolution_embedder.linear_2"),
    Rule("ar_embedder.fc1", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    Rule("ar_embedder.fc2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
    Rule("t_block", "adaln_single.linear"),
    Rule("y_proj.fc1", "caption_projection.linear_1"),
    Rule("y_proj.fc2", "caption_projection.linear_2"),
    Rule("blocks.scale_shift_table", f"{_B}.scale_shift_table", "param"),
    Rule("blocks.attn.qkv", (f"{_B}.attn1.to_q", f"{_B}.attn1.to_k", f"{_B}.attn1.to_v")),
    Rule("blocks.attn.proj", f"{_B}.attn1.to_out.0"),
    Rule("blocks.cross_attn.q", f"{_B}.attn2.to_q"),
    Rule("blocks.cross_attn.kv", (f"{_B}.attn2.to_k", f"{_B}.attn2.to_v")),
    Rule("blocks.cross_attn.proj", f"{_B}.attn2.to_out.0"),
    Rule("blocks.mlp.fc1", f"{_B}.ff.net.0.proj"),
    Rule("blocks.mlp.fc2", f"{_B}.ff.net.2"),
    Rule("final_layer.scale_shift_table", "scale_shift_table", "param"),
    Rule("final_layer.linear", "proj_out"),
]
