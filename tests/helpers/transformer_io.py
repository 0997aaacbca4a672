"""Inputs of a tiny PixArt forward and one forward of diffusers' model or ours on them (the parity tests of the
transformer and its LoRA adapters share them)."""
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
