"""LCD (PixArt-δ) train state and update (PixArt-δ, arXiv 2401.05252, §3; PixArt-alpha
`train_scripts/train_pixart_lcm.py`).

The state is a dict of global jax.Arrays: `step` (micro-steps done), `teacher` (frozen), `student` (trained),
`target` (EMA of the student), all three fp32 pure-dict parameter trees initialised to the same weights and
placed by the same logical-axis rules (FSDP shards each copy); `buffers` (y_embedding), `opt` (AdamW state of
the student), `rng`. With LoRA the student and target are adapters on a `frozen` base, which with the adapters off
is the teacher (consistency_networks.py). The update runs in step.TrainStep (explicit shardings, donated state,
`fold_in(rng, step)`).
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from pixart_jax.pipelines.guidance import Caption, guided_forward
from pixart_jax.training.lcm_loss import Distance, lcm_loss, lcm_tables
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs
from pixart_jax.training.step import Objective


@dataclasses.dataclass(frozen=True)
class LCMSettings(Objective):
    """One LCD step (see lcm_update)."""
    num_ddim_timesteps: int = 50        # N: the DDIM grid {19, 39, ..., 999}
    guidance: float = 4.5               # fixed w, LCM form ε_c + w (ε_c - ε_u)
    loss_type: str = "huber"            # pseudo-Huber or L2
    huber_c: float = 1e-3
    target_decay: float = 0.95          # EMA of the student, once per optimizer step
    caption_dropout: float = 0.0        # the student's captions only
    null_caption: Optional[np.ndarray] = None   # the teacher's uncond caption (T, C); None: y_embedding


def prediction_fn(model):
    """model_fn(x, t, captions, mask, resolution, aspect_ratio) -> the prediction channels (ε or v: the first
    x.shape[1] of the 8) of `model`, as float32."""
    def model_fn(x, t, captions, mask, resolution, aspect_ratio):
        return model(x, t, captions, mask, resolution, aspect_ratio)[:, :x.shape[1]].astype(jnp.float32)
    return model_fn


def unconditional_caption(captions, mask, y_embedding, null_caption):
    """(captions, mask) of the teacher's unconditional branch: y_embedding with each prompt's own mask (PixArt-δ),
    or the given (T, C) null caption (T5 of "") with T valid tokens, padded to the caption length."""
    if null_caption is None:
        return jnp.broadcast_to(y_embedding.astype(jnp.float32), captions.shape), mask
    tokens, length = null_caption.shape[0], captions.shape[1]
    if null_caption.shape[1] != captions.shape[2] or tokens > length:
        raise ValueError(f"null caption of shape {null_caption.shape} does not fit captions of {length} tokens x "
                         f"{captions.shape[2]} channels")
    padded = jnp.zeros(captions.shape[1:], jnp.float32).at[:tokens].set(null_caption)
    null_mask = (jnp.arange(length) < tokens).astype(mask.dtype)
    return jnp.broadcast_to(padded, captions.shape), jnp.broadcast_to(null_mask, mask.shape)


def micro_conditions(batch):
    """The batch's micro-conditions as the model's keyword arguments."""
    return dict(resolution=batch["img_hw"], aspect_ratio=batch["aspect_ratio"])


def lcm_update(copies, optimizer, settings: LCMSettings):
    """The LCD update `(state, batch, key) -> (state, metrics {loss, grad_norm, lr})` of the networks `copies`
    (consistency_networks: FullCopies or AdapterCopies).

    One step: x0 (fresh posterior sample × latent_scale), n ~ U{0..N-1}, ε and fixed w; the teacher on
    [cond, uncond] (uncond = y_embedding with each prompt's own mask, or `null_caption`: the (T, C) T5 encoding of
    "" with its T valid tokens), student and stop-gradient target into `lcm_loss`; AdamW on the student; then
    target ← decay·target + (1 - decay)·student once per optimizer step. `caption_dropout` replaces the student's
    caption by y_embedding (the reference's unwired-config quirk: 0.1; teacher and target always see the real
    caption)."""
    s = settings
    tables, draw_tables = lcm_tables(s.num_ddim_timesteps), diffusion_tables()

    def update(state, batch, key):
        k_inputs, k_n = jax.random.split(key)
        null = state["buffers"]["y_embedding"]
        # the DDPM timestep this draws is unused: LCD draws grid indices n instead
        x0, _, noise, student_captions = draw_training_inputs(k_inputs, batch, draw_tables, s.caption_dropout,
                                                              null, s.latent_scale)
        size = x0.shape[0]
        n = jax.random.randint(k_n, (size,), 0, s.num_ddim_timesteps)
        w = jnp.full((size,), s.guidance, jnp.float32)
        captions = jnp.asarray(batch["caption"], jnp.float32)
        cond = Caption(captions, batch["mask"])
        uncond = Caption(*unconditional_caption(captions, batch["mask"], null, s.null_caption))
        micro = micro_conditions(batch)

        def teacher(x, t):
            out_uncond, out_cond = guided_forward(prediction_fn(copies.teacher(state)), x, t, cond, uncond, **micro)
            return out_cond, out_uncond

        def loss_fn(student):
            return lcm_loss(
                lambda x, t: prediction_fn(copies.model(state, student))(x, t, student_captions, cond.mask, **micro),
                teacher, lambda x, t: prediction_fn(copies.model(state, state["target"]))(x, t, *cond, **micro),
                tables, x0, noise, n, w, Distance(s.loss_type, s.huber_c), s.prediction_type)

        student, opt, target, metrics = optimizer.update(loss_fn, state["student"], state["opt"], state["target"],
                                                         s.target_decay, state["step"])
        return dict(state, student=student, opt=opt, target=target), metrics
    return update
