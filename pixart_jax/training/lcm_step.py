"""LCD (PixArt-δ) train state and the one jitted step (PixArt-δ, arXiv 2401.05252, §3;
PixArt-alpha `train_scripts/train_pixart_lcm.py`).

The state is a dict of global jax.Arrays: `step` (micro-steps done), `teacher` (frozen), `student` (trained),
`target` (EMA of the student), all three fp32 pure-dict parameter trees initialised to the same weights and
placed by the same logical-axis rules (FSDP shards each copy); `buffers` (y_embedding), `opt` (AdamW state of
the student), `rng`. The step reuses TrainStep's jit (explicit shardings, donated state) and its
`fold_in(rng, step)` randomness, so a resumed run draws exactly what an uninterrupted one would.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.pipelines.guidance import Caption, guided_forward
from pixart_jax.samplers.prediction import check_prediction_type
from pixart_jax.training.lcm_loss import lcm_loss, lcm_tables
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs
from pixart_jax.training.step import TrainStep, abstract_state, init_state, optimizer_update


def _initial_lcd_state(tx, seed):
    def init(params, buffers):
        return {"step": jnp.zeros((), jnp.int32), "teacher": params, "student": jax.tree.map(jnp.copy, params),
                "target": jax.tree.map(jnp.copy, params), "buffers": buffers, "opt": tx.init(params),
                "rng": jax.random.PRNGKey(seed)}
    return init


# (state, shardings) and (ShapeDtypeStructs, shardings) of the LCD state, as train.step's for pre-training.
init_lcd_state = functools.partial(init_state, initial=_initial_lcd_state)
abstract_lcd_state = functools.partial(abstract_state, initial=_initial_lcd_state)


def prediction_fn(graphdef, params, buffers):
    """model_fn(x, t, captions, mask, resolution, aspect_ratio) -> the prediction channels (ε or v: the first
    x.shape[1] of the 8) of the model `params`, as float32."""
    model = nnx.merge(graphdef, params, buffers)

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


class LCMStep(TrainStep):
    """The jitted LCD step `(state, batch) -> (state, metrics {loss, grad_norm, lr})`; the state is donated.

    One step: x0 (fresh posterior sample × latent_scale), n ~ U{0..N-1}, ε and fixed w; the teacher on
    [cond, uncond] (uncond = y_embedding with each prompt's own mask, or `null_caption`: the (T, C) T5 encoding of
    "" with its T valid tokens), student and stop-gradient target into `lcm_loss`; AdamW on the student; then
    target ← decay·target + (1 - decay)·student once per optimizer step. `caption_dropout`
    replaces the student's caption by y_embedding (the reference's unwired-config quirk: 0.1; teacher and
    target always see the real caption)."""

    def __init__(self, graphdef, tx, schedule, state_shardings, mesh, *, accum_steps=1, target_decay=0.95,
                 guidance=4.5, loss_type="huber", huber_c=1e-3, num_ddim_timesteps=50, caption_dropout=0.0,
                 latent_scale=LATENT_SCALE, prediction_type="epsilon", null_caption=None):
        check_prediction_type(prediction_type)
        self.traces = 0
        tables, draw_tables = lcm_tables(num_ddim_timesteps), diffusion_tables()

        def step(state, batch):
            self.traces += 1
            k_inputs, k_n = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
            buffers, null = state["buffers"], state["buffers"]["y_embedding"]
            # the DDPM timestep this draws is unused: LCD draws grid indices n instead
            x0, _, noise, student_captions = draw_training_inputs(k_inputs, batch, draw_tables, caption_dropout,
                                                                  null, latent_scale)
            size = x0.shape[0]
            n = jax.random.randint(k_n, (size,), 0, num_ddim_timesteps)
            w = jnp.full((size,), guidance, jnp.float32)
            captions = jnp.asarray(batch["caption"], jnp.float32)
            cond = Caption(captions, batch["mask"])
            uncond = Caption(*unconditional_caption(captions, batch["mask"], null, null_caption))
            micro = dict(resolution=batch["img_hw"], aspect_ratio=batch["aspect_ratio"])

            def teacher(x, t):
                out_uncond, out_cond = guided_forward(prediction_fn(graphdef, state["teacher"], buffers), x, t, cond,
                                                      uncond, **micro)
                return out_cond, out_uncond

            def loss_fn(student):
                return lcm_loss(
                    lambda x, t: prediction_fn(graphdef, student, buffers)(x, t, student_captions, cond.mask, **micro),
                    teacher, lambda x, t: prediction_fn(graphdef, state["target"], buffers)(x, t, *cond, **micro),
                    tables, x0, noise, n, w, loss_type, huber_c, prediction_type)

            student, opt, target, metrics = optimizer_update(tx, schedule, accum_steps, loss_fn, state["student"],
                                                             state["opt"], state["target"], target_decay,
                                                             state["step"])
            return dict(state, step=state["step"] + 1, student=student, opt=opt, target=target), metrics

        self._compile(step, state_shardings, mesh)
