"""PEFT LoRA adapters for tests: a diffusers PixArtTransformer2DModel wrapped by peft with random (nonzero) A and B,
and the same adapter re-keyed in the original repo's module names (kohya keys), as a PixArt LoRA trained on the
original code would be stored."""
import numpy as np
import torch

from pixart_jax.testing.reference_pipeline import initial_latents

# diffusers block module -> original repo module, for the blocks (spec §4.4); q/k/v and k/v are fused there.
ORIGINAL_BLOCK = {"attn1.to_out.0": "attn.proj", "attn2.to_q": "cross_attn.q_linear", "attn2.to_out.0":
                  "cross_attn.proj", "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"}

# The pipeline call of the LoRA pipeline tests (JAX and torch): 3 guided DPM steps at 64x64 from fixed latents.
PROMPTS = ["a small red circle at the top left", "an astronaut riding a horse"]
ARGS = dict(num_inference_steps=3, guidance_scale=4.5, height=64, width=64, output_type="np",
            use_resolution_binning=False, progress=False, latents=initial_latents(2, 64, 64))


def randomize_adapters(model, seed):
    """Every lora_A / lora_B of `model` drawn at random, A ~ N(0, 1/fan_in) and B ~ N(0, 0.25/r): the adapters
    change the output by about as much as the base weights make it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                fan_in = np.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if ".lora_B." in name else 1) / np.sqrt(fan_in))


def kohya(path, tensor):
    return f"lora_transformer_{path.replace('.', '_')}.lora_{'down' if tensor.startswith('A') else 'up'}.weight"


def to_original_names(state, layers):
    """The adapter (a PEFT state dict of lora_alpha 8 on the PixArt scripts' targets, `layers` blocks) with the
    blocks' modules in the original layout (kohya keys with alpha): q/k/v adapters of rank r become one adapter on
    qkv of rank 3r, A concatenated and B block-diagonal (alpha 3·8 keeps alpha / r)."""
    out = {}
    for key, value in state.items():
        path, tensor = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        if path.startswith("transformer_blocks.") and ".to_k" not in path and ".to_v" not in path \
                and ".attn1.to_q" not in path:
            i, rest = path.split(".")[1], path.split(".", 2)[2]
            path = f"blocks.{i}.{ORIGINAL_BLOCK[rest]}"
        elif path.startswith("transformer_blocks."):
            continue
        out[kohya(path, tensor)] = value
        out[f"lora_transformer_{path.replace('.', '_')}.alpha"] = torch.tensor(8.0)
    for i in range(layers):
        for fused, names in (("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
                             ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v"))):
            a = [state[f"base_model.model.transformer_blocks.{i}.{n}.lora_A.weight"] for n in names]
            b = [state[f"base_model.model.transformer_blocks.{i}.{n}.lora_B.weight"] for n in names]
            out[kohya(f"blocks.{i}.{fused}", "A.weight")] = torch.cat(a)
            out[kohya(f"blocks.{i}.{fused}", "B.weight")] = torch.block_diag(*b)
            out[f"lora_transformer_blocks_{i}_{fused.replace('.', '_')}.alpha"] = torch.tensor(8.0 * len(names))
    return out


def pipeline_with_adapter(root, micro=True, seed=2):
    """(pipeline directory, PEFT adapter folder, original-names adapter file) under `root`: a tiny random diffusers
    PixArt pipeline (DPM-Solver) and a random PEFT adapter on its transformer (the PixArt scripts' targets, r 4,
    lora_alpha 8), also saved with the original repo's module names."""
    import diffusers
    import peft

    from pixart_jax.testing.reference_pipeline import build_pipeline
    from pixart_jax.weights import save_safetensors
    from pixart_jax.weights.keymaps.lora import PIXART_TARGETS

    reference = build_pipeline(root / "pipe", micro=micro, scheduler=diffusers.DPMSolverMultistepScheduler())
    model = peft.get_peft_model(reference.transformer, peft.LoraConfig(r=4, lora_alpha=8,
                                                                        target_modules=list(PIXART_TARGETS)))
    randomize_adapters(model, seed)
    model.save_pretrained(root / "lora")
    state = peft.get_peft_model_state_dict(model)
    layers = reference.transformer.config.num_layers
    original = {k: v.numpy() for k, v in to_original_names(state, layers).items()}
    save_safetensors(original, str(root / "original.safetensors"))
    return str(root / "pipe"), str(root / "lora"), str(root / "original.safetensors")
