"""Inputs of a tiny PixArt forward and one forward of diffusers' model or ours on them (the parity tests of the
transformer and its LoRA adapters share them), and a diffusers state dict rewritten in the original layout."""
import numpy as np


def inputs(batch, h, w, tokens=8, caption=32, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, tokens), np.float32)
    mask[0, 3:] = 0  # first sample: 3 valid tokens, the rest padding
    return dict(latents=rng.standard_normal((batch, 4, h, w)).astype(np.float32),
                timestep=np.linspace(999, 1, batch).round().astype(np.float32),
                encoder_hidden_states=rng.standard_normal((batch, tokens, caption)).astype(np.float32),
                encoder_attention_mask=mask,
                resolution=np.tile(np.array([[8.0 * h, 8.0 * w]], np.float32), (batch, 1)),
                aspect_ratio=np.full((batch, 1), h / w, np.float32))


def run_reference(model, x, use_mask=True, micro=True):
    import torch

    t = {k: torch.from_numpy(v) for k, v in x.items()}
    added = {"resolution": t["resolution"], "aspect_ratio": t["aspect_ratio"]} if micro else None
    with torch.no_grad():
        return model(t["latents"], encoder_hidden_states=t["encoder_hidden_states"], timestep=t["timestep"],
                     added_cond_kwargs=added, encoder_attention_mask=t["encoder_attention_mask"] if use_mask
                     else None, return_dict=False)[0].numpy()


def run_ours(model, x, use_mask=True, micro=True):
    return np.asarray(model(x["latents"], x["timestep"], x["encoder_hidden_states"],
                            x["encoder_attention_mask"] if use_mask else None,
                            x["resolution"] if micro else None, x["aspect_ratio"] if micro else None))


def original_layout(diffusers_sd, y_embedding):
    """The original repo's state dict, built from diffusers' keys by the mapping of spec §4.4 (reversed)."""
    import torch

    hidden = diffusers_sd["proj_out.weight"].shape[1]
    sd = {"pos_embed": torch.zeros(1, 64, hidden), "y_embedder.y_embedding": y_embedding}  # a buffer, not read
    plain = {"pos_embed.proj": "x_embedder.proj", "caption_projection.linear_1": "y_embedder.y_proj.fc1",
             "caption_projection.linear_2": "y_embedder.y_proj.fc2",
             "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "adaln_single.emb.resolution_embedder.linear_1": "csize_embedder.mlp.0",
             "adaln_single.emb.resolution_embedder.linear_2": "csize_embedder.mlp.2",
             "adaln_single.emb.aspect_ratio_embedder.linear_1": "ar_embedder.mlp.0",
             "adaln_single.emb.aspect_ratio_embedder.linear_2": "ar_embedder.mlp.2",
             "adaln_single.linear": "t_block.1", "proj_out": "final_layer.linear",
             "scale_shift_table": "final_layer.scale_shift_table"}
    block = {"scale_shift_table": "scale_shift_table", "attn1.to_out.0": "attn.proj",
             "attn2.to_q": "cross_attn.q_linear", "attn2.to_out.0": "cross_attn.proj",
             "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"}
    for key, value in diffusers_sd.items():
        if key.startswith("transformer_blocks."):
            _, i, rest = key.split(".", 2)
            for src, dst in block.items():
                if rest.startswith(src):
                    sd[f"blocks.{i}.{dst}{rest[len(src):]}"] = value
        else:
            module, leaf = key.rsplit(".", 1) if key != "scale_shift_table" else (key, "")
            sd[plain[module] + ("." + leaf if leaf else "")] = value
    for i in range(1 + max(int(k.split(".")[1]) for k in diffusers_sd if k.startswith("transformer_blocks."))):
        b = f"transformer_blocks.{i}"
        for leaf in ("weight", "bias"):
            sd[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([diffusers_sd[f"{b}.attn1.to_{n}.{leaf}"] for n in "qkv"])
            sd[f"blocks.{i}.cross_attn.kv_linear.{leaf}"] = torch.cat(
                [diffusers_sd[f"{b}.attn2.to_{n}.{leaf}"] for n in "kv"])
    return sd
