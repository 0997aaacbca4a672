"""PixArt-δ's ControlNet-Transformer (spec §5.1) in PyTorch, around diffusers' PixArtTransformer2DModel (diffusers
has none): the first `copies` base blocks (13 in the released models) have trainable copies that read the control
latents; copy k's output, through a zero-initialised linear, joins the residual stream before base block k + 1.

Module names follow the original wrapper (`base_model`, `controlnet.{k}.copied_block`, `controlnet.0.before_proj`,
`controlnet.{k}.after_proj`) with diffusers' names inside, so the original `.pth` maps key by key.
"""
import copy

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from pixart_jax.models.controlnet import RELEASED_COPIES
from pixart_jax.torch.loading import assign, check_layout, empty_module, to_torch
from pixart_jax.weights.controlnet import original_layout
from pixart_jax.weights.keymaps.controlnet import BASE_PREFIX as BASE
from pixart_jax.weights.keymaps.controlnet import BRANCH_PREFIX as CONTROL
from pixart_jax.weights.keymaps.controlnet import FIXED_SIZE_IGNORED_PREFIXES
from pixart_jax.weights.transformer import original_to_diffusers


class ControlBlock(nn.Module):
    """One trainable copy of a base block, with its zero linear out (and, for the first, the one in)."""

    def __init__(self, block, width, first):
        super().__init__()
        self.copied_block = block
        if first:
            self.before_proj = nn.Linear(width, width)
        self.after_proj = nn.Linear(width, width)


class PixArtControlNetTransformer(nn.Module):
    """forward as PixArtTransformer2DModel's plus `control_latents` (B, 4, H, W): VAE latents of the control image,
    already scaled like `hidden_states`. Without them the output is the base model's."""

    def __init__(self, base: PixArtTransformer2DModel, copies=RELEASED_COPIES):
        super().__init__()
        width = base.config.num_attention_heads * base.config.attention_head_dim
        self.base_model = base
        self.controlnet = nn.ModuleList(ControlBlock(copy.deepcopy(base.transformer_blocks[k]), width, k == 0)
                                        for k in range(copies))

    @property
    def config(self):
        return self.base_model.config

    @property
    def dtype(self):
        return self.base_model.dtype

    @property
    def y_embedding(self):
        """The base's null caption (None where its checkpoint has none)."""
        return getattr(self.base_model, "y_embedding", None)

    def forward(self, hidden_states, encoder_hidden_states, timestep, added_cond_kwargs=None,
                encoder_attention_mask=None, control_latents=None, return_dict=True):
        base, p = self.base_model, self.config.patch_size
        batch, _, height, width = hidden_states.shape
        h, w = height // p, width // p
        if base.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("added_cond_kwargs (resolution, aspect_ratio) are needed by this micro-conditioned model")
        bias = None
        if encoder_attention_mask is not None:  # 0/1 (B, L) -> additive bias (B, 1, L), as diffusers
            bias = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        x = base.pos_embed(hidden_states)                                      # (B, N, D) patches + sin-cos
        t0, t = base.adaln_single(timestep, added_cond_kwargs, batch_size=batch,
                                  hidden_dtype=hidden_states.dtype)            # (B, 6D), (B, D)
        y = base.caption_projection(encoder_hidden_states).view(batch, -1, x.shape[-1])  # (B, L, D)
        blocks = dict(encoder_hidden_states=y, encoder_attention_mask=bias, timestep=t0)
        c = None if control_latents is None else base.pos_embed(control_latents.to(hidden_states.dtype))  # (B, N, D)
        for k, block in enumerate(base.transformer_blocks):
            if c is not None and 1 <= k <= len(self.controlnet):
                control = self.controlnet[k - 1]
                c = control.copied_block(x + control.before_proj(c) if k == 1 else c, **blocks)  # (B, N, D)
                x = x + control.after_proj(c)                                  # (B, N, D)
            x = block(x, **blocks)                                             # (B, N, D)
        shift, scale = (base.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        x = base.proj_out(base.norm_out(x) * (1 + scale) + shift)              # (B, N, p·p·C_out)
        x = x.reshape(batch, h, w, p, p, base.out_channels)                    # (B, h, w, p, p, C_out)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(batch, base.out_channels, h * p, w * p)  # (B, C_out, H, W)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def load_controlnet(path, config=None, device="cpu", dtype=torch.float32) -> PixArtControlNetTransformer:
    """A ControlNet-Transformer from a checkpoint in any layout pixart_jax.load_controlnet reads (an original
    `.pth` / `.safetensors` of `ControlPixArtHalf` or `ControlPixArtMSHalf`: `base_model.*`, `controlnet.{k}.*`;
    the official directory; ours), converted through our key maps. `config` as for pixart_jax.load_controlnet (for
    original files whose name does not say the variant). The base's null caption is kept as
    `model.base_model.y_embedding`."""
    cfg, state, where = original_layout(path, config)
    unknown = sorted(k for k in state if not k.startswith((BASE, CONTROL)))
    if unknown:
        raise ValueError(f"{where} is not a ControlNet checkpoint: keys outside {BASE}* / {CONTROL}*, e.g. "
                         f"{unknown[:3]}")
    unread = FIXED_SIZE_IGNORED_PREFIXES if cfg.stored_pos_table else ()  # as the fixed-size class
    base_tensors, y_embedding = original_to_diffusers(
        {k.removeprefix(BASE): v for k, v in state.items() if k.startswith(BASE) and not k.startswith(unread)},
        cfg.base, f"{where} ({BASE}*)")
    copied = {f"blocks.{k.removeprefix(CONTROL).replace('.copied_block.', '.', 1)}": v for k, v in state.items()
              if k.startswith(CONTROL) and ".copied_block." in k}
    found = len({k.split(".")[1] for k in copied})
    if found != cfg.copies:
        raise ValueError(f"{where} holds {found} copied blocks ({CONTROL}{{k}}.copied_block.*), not "
                         f"copies={cfg.copies}")
    block_tensors, _ = original_to_diffusers(copied, cfg.base.replace(depth=cfg.copies), f"{where} ({CONTROL}*)",
                                             only="blocks.")
    tensors = {BASE + k: v for k, v in base_tensors.items()}
    tensors.update({CONTROL + k.removeprefix("transformer_blocks.").replace(".", ".copied_block.", 1): v
                    for k, v in block_tensors.items()})
    tensors.update({k: v for k, v in state.items() if k.startswith(CONTROL) and "_proj." in k})
    model = empty_module(lambda: PixArtControlNetTransformer(
        PixArtTransformer2DModel.from_config(cfg.base.to_diffusers()), cfg.copies))
    check_layout(model, {k: v.shape for k, v in tensors.items()}, where)
    model = assign(model, {k: to_torch(v, device, dtype) for k, v in tensors.items()}, device)
    model.base_model.register_buffer("y_embedding", to_torch(y_embedding, device, torch.float32), persistent=False)
    return model
