"""`pixart-jax demo`: trains, distils and scores a small PixArt from scratch, offline, on this machine's CPU.

1. data: the procedural shapes dataset (48×48 images, captions such as "a small red circle at the top left");
2. text: a word-level SentencePiece tokenizer trained on the captions and a random, frozen 2-layer T5;
3. latents: a linear autoencoder fitted here (PatchPCA: 16 px patches -> 32 channels on a 3×3 latent grid);
4. teacher: PixArt ("shapes-demo" preset, v-prediction) trained by pixart_jax.training, the code of full-size training;
5. students: latent consistency distillation of the teacher (pixart_jax.training.lcm: PixArt-δ's LCD, guidance
   4.5 baked in) and Phased Consistency Models (pixart_jax/demo/pcm_stage.py: M = 1, 2, 4, 8, and a normal-CFG M = 4);
6. scores: every method samples the 36 fixed evaluation prompts from the same initial noise; the procedural checker
   reads kind, colour, size and position back off each image (alignment), each image is compared with its caption's
   rendering (fidelity), and the 1/2/4/8-step images of LCM and of PCM are compared with each other (step change;
   pixart_jax/demo/fidelity.py) -> DIR/scores.json and DIR/grid.png;
7. ControlNet: a ControlNet-Transformer of the teacher trained on Canny edges, scored on how well its samples follow
   control images that put the shape elsewhere than the caption does (pixart_jax/demo/control.py).
"""
import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from pixart_jax.demo import checker, control, fidelity, lora_concept, pcm_stage, shapes
from pixart_jax.demo.patch_pca import PatchPCA
from pixart_jax.files import atomic_file
from pixart_jax.models.inference_jit import inference_jit
from pixart_jax.models.t5 import T5Config, T5Encoder
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
from pixart_jax.pipelines.prompts import load_tokenizer, tokenize, train_tokenizer
from pixart_jax.pipelines.text_to_image import PixArtPipeline
from pixart_jax.samplers import DDIM, LCM, DPMSolverMultistep
from pixart_jax.training import config as config_lib
from pixart_jax.training import lcm, pretraining
from pixart_jax.weights.transformer import save_jax

MODEL = PRESETS["shapes-demo"]
PATCH = shapes.IMAGE_SIZE // MODEL.sample_size
TEXT_ENCODER = T5Config(vocab_size=64, d_model=MODEL.caption_channels, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
GUIDANCE = 4.5
# v-prediction: with PixArt's ε-objective this model learns colour, kind and size in minutes but not where the
# caption puts the shape (position stays at chance after 4,000 steps): where x_t still hides the layout the
# ε-loss sees x_0 only through √ᾱ_t (< 0.16 there), while the v-loss sees it at full weight.
PREDICTION = "v_prediction"
# (name, model, sampler, steps, guidance) in grid order; model names the network sampled ("teacher", "lcm", or a
# PCM student). DDIM uses "trailing" timesteps (4 steps: 999, 749, 499, 249), as few-step DDIM should: "leading"
# would end at t = 0 and, with one step, call the model only at t = 0 on pure noise.
DDIM_FEW_STEPS = DDIM(prediction_type=PREDICTION, timestep_spacing="trailing")
METHODS = (("teacher_dpm_20_cfg", "teacher", DPMSolverMultistep(prediction_type=PREDICTION), 20, GUIDANCE),
           ("teacher_dpm_4_cfg", "teacher", DPMSolverMultistep(prediction_type=PREDICTION), 4, GUIDANCE),
           ("teacher_ddim_4_cfg", "teacher", DDIM_FEW_STEPS, 4, GUIDANCE),
           ("teacher_ddim_2_cfg", "teacher", DDIM_FEW_STEPS, 2, GUIDANCE),
           ("teacher_ddim_1_cfg", "teacher", DDIM_FEW_STEPS, 1, GUIDANCE),
           *((f"lcm_{k}", "lcm", LCM(prediction_type=PREDICTION), k, 1.0) for k in (8, 4, 2, 1)),
           *pcm_stage.methods(PREDICTION, GUIDANCE))


@dataclasses.dataclass(frozen=True)
class Settings:
    images: int              # training images (all 216 attribute combinations, cycled, each with its own jitter)
    teacher_steps: int
    lcm_steps: int
    batch_size: int = 64
    teacher_lr: float = 1e-3
    lcm_lr: float = 1e-4                 # LCD's and every PCM student's
    seed: int = 0


FULL = Settings(images=4096, teacher_steps=5000, lcm_steps=400)
QUICK = Settings(images=1024, teacher_steps=200, lcm_steps=20)


def build_text_encoder(captions, directory, seed):
    """(tokenizer, T5 encoder): a word-level tokenizer trained on `captions`, saved in `directory`, and a random T5
    (frozen: it is never trained; its final RMS norm gives the caption features unit scale)."""
    tokenizer = load_tokenizer(train_tokenizer(captions, directory, vocab_size=TEXT_ENCODER.vocab_size,
                                               model_type="word"))
    if len(tokenizer) > TEXT_ENCODER.vocab_size + 100:  # T5 tokenizers append 100 sentinel ids, never produced here
        raise ValueError(f"the caption vocabulary needs {len(tokenizer) - 100} ids, the T5 has "
                         f"{TEXT_ENCODER.vocab_size}")
    return tokenizer, T5Encoder(TEXT_ENCODER, rngs=nnx.Rngs(seed))


def caption_features(tokenizer, text_encoder, captions, batch=512):
    """(features (N, L, C) float32, mask (N, L) int32) of `captions`, L = the model's max_tokens."""
    ids, mask = tokenize(tokenizer, captions, MODEL.max_tokens)
    encode = inference_jit(lambda model, i, m: model(i, m))
    features = [np.asarray(encode(text_encoder, ids[i:i + batch], mask[i:i + batch]))
                for i in range(0, len(ids), batch)]
    return np.concatenate(features).astype(np.float32), mask


def training_examples(latents, features, mask):
    """Example dicts in pixart_jax/training/data.py's layout; the PCA latents are exact, so the posterior std is 0."""
    size = np.array([shapes.IMAGE_SIZE] * 2, np.float32)
    return [{"caption": f, "mask": m, "mean": z, "std": np.zeros_like(z), "img_hw": size,
             "aspect_ratio": np.ones(1, np.float32), "bucket": "1.0"}
            for f, m, z in zip(features, mask, np.asarray(latents, np.float32))]


def train_overrides(workdir, settings, steps, lr, latent_scale):
    """Dotted config overrides shared by the teacher and the distillation: small-model optimiser settings
    (lr without sqrt scaling, no weight decay, short warmup, gradient clip 1) and one checkpoint at the end."""
    return [f"workdir={workdir}", f"steps={steps}", f"checkpoint_every={steps}", f"seed={settings.seed}",
            "model.preset=shapes-demo", f"model.prediction_type={PREDICTION}", f"data.batch_size={settings.batch_size}",
            f"data.latent_scale={latent_scale}",
            f"optimizer.lr={lr}", "optimizer.sqrt_lr_scaling=false", "optimizer.weight_decay=0.0",
            "optimizer.grad_clip=1.0", "optimizer.warmup_steps=100", "checkpoint.async_save=false",
            "logging.log_every=100"]


def train_teacher(examples, workdir, settings, latent_scale):
    """Pre-trains the teacher (the training loop); returns the trained PixArtTransformer (saved in workdir/model)."""
    cfg = config_lib.load_config(None, train_overrides(workdir, settings, settings.teacher_steps,
                                                       settings.teacher_lr, latent_scale))
    result = pretraining.train(cfg, examples)
    model = nnx.merge(result.graphdef, result.state["params"], result.state["buffers"])
    save_jax(model, os.path.join(workdir, "model"))
    return model


def distill_student(examples, teacher_dir, workdir, settings, latent_scale):
    """LCD of the teacher saved in `teacher_dir`; returns the EMA target (what PixArt-δ ships)."""
    overrides = train_overrides(workdir, settings, settings.lcm_steps, settings.lcm_lr, latent_scale)
    cfg = lcm.load_config(None, [*overrides, f"model.init_from={teacher_dir}", f"lcm.guidance={GUIDANCE}"])
    result = lcm.distill(cfg, examples)
    return nnx.merge(result.graphdef, result.state["target"], result.state["buffers"])


def evaluation_noise(prompts):
    """(N, C, h, w): each evaluation prompt's initial noise, from its seed."""
    return jnp.stack([jax.random.normal(jax.random.key(p.seed), (MODEL.in_channels, MODEL.sample_size,
                                                                 MODEL.sample_size)) for p in prompts])


def sample(pipe, prompts, steps, guidance, **control):
    """(N, H, W, 3) images in [0, 1] of `pipe` for the evaluation prompts from their noise (`control`: a
    ControlNet pipeline's control keywords)."""
    return pipe(prompt=[p.caption for p in prompts], num_inference_steps=steps, guidance_scale=guidance,
                height=shapes.IMAGE_SIZE, width=shapes.IMAGE_SIZE, latents=evaluation_noise(prompts), seed=0,
                output_type="np", use_resolution_binning=False, clean_caption=False, null_caption="y_embedding",
                progress=False, **control).images


def sample_all(models, text_encoder, tokenizer, vae, prompts):
    """{method: (N, H, W, 3) images in [0, 1]} for METHODS ({model name: transformer} in `models`), every method
    from the same per-prompt initial noise."""
    images = {}
    for name, model, sampler, steps, guidance in tqdm(METHODS, desc="sampling", unit="method"):
        pipe = PixArtPipeline(transformer=models[model], text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                              sampler=sampler)
        images[name] = sample(pipe, prompts, steps, guidance)
    return images


def write_grid(images, path, columns=6, blocks_per_row=6, gap=2, margin=12, title=16):
    """One labelled block per method, its images `columns` wide in prompt order (the same prompt sits at the same
    place in every block), `blocks_per_row` blocks side by side: up to 18 blocks fit a 1920x1080 screen at 1:1."""
    names, size = list(images), shapes.IMAGE_SIZE
    rows = -(-len(images[names[0]]) // columns)
    block_w, block_h = columns * size + (columns - 1) * gap, title + rows * size + (rows - 1) * gap
    across = min(blocks_per_row, len(names))
    down = -(-len(names) // across)
    sheet = Image.new("RGB", (across * block_w + (across + 1) * margin, down * block_h + (down + 1) * margin), "white")
    draw = ImageDraw.Draw(sheet)
    for b, name in enumerate(names):
        left = margin + (b % across) * (block_w + margin)
        top = margin + (b // across) * (block_h + margin)
        draw.text((left, top + 2), name, fill="black")
        for i, image in enumerate(images[name]):
            r, c = divmod(i, columns)
            tile = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(tile, (left + c * (size + gap), top + title + r * (size + gap)))
    with atomic_file(path, overwrite=True) as tmp:
        sheet.save(tmp, format="PNG")


def run(out, quick=False):
    """The whole demo into directory `out`; returns the scores dict written to out/scores.json."""
    settings = QUICK if quick else FULL
    os.makedirs(out, exist_ok=True)
    clock = {}
    start = time.perf_counter()
    images, captions, _ = shapes.make_dataset(settings.images, settings.seed)
    tokenizer, text_encoder = build_text_encoder(captions, os.path.join(out, "tokenizer"), settings.seed)
    features, mask = caption_features(tokenizer, text_encoder, captions)
    pixels = shapes.to_model_input(images)
    vae = PatchPCA.fit(pixels, patch=PATCH, components=MODEL.in_channels)
    vae.save(os.path.join(out, "patch_pca.npz"))
    examples = training_examples(vae.encode(pixels), features, mask)
    clock["data_s"] = time.perf_counter() - start

    start = time.perf_counter()
    teacher = train_teacher(examples, os.path.join(out, "teacher"), settings, vae.scaling_factor)
    clock["teacher_s"] = time.perf_counter() - start
    start = time.perf_counter()
    teacher_dir = os.path.join(out, "teacher", "model")
    models = {"teacher": teacher, "lcm": distill_student(examples, teacher_dir, os.path.join(out, "lcm"), settings,
                                                         vae.scaling_factor)}
    clock["distillation_s"] = time.perf_counter() - start
    start = time.perf_counter()
    models.update(pcm_stage.distill_students(
        examples, teacher_dir, os.path.join(out, "pcm"),
        lambda workdir: train_overrides(workdir, settings, settings.lcm_steps, settings.lcm_lr, vae.scaling_factor),
        GUIDANCE))
    clock["pcm_s"] = time.perf_counter() - start

    start = time.perf_counter()
    prompts = shapes.evaluation_set()
    samples = sample_all(models, text_encoder, tokenizer, vae, prompts)
    evaluation = evaluate(samples, prompts, vae)
    clock["evaluation_s"] = time.perf_counter() - start

    parts = DemoParts(settings, tokenizer, text_encoder, vae, teacher, teacher_dir)
    rows, scores = adaptation_stages(out, parts, (examples, images, captions), prompts, samples[METHODS[0][0]],
                                     quick, clock)
    write_grid({**samples, **rows}, os.path.join(out, "grid.png"))

    report = {**evaluation, **scores, "settings": dataclasses.asdict(settings),
              "prompts": [p.caption for p in prompts], "seconds": {k: round(v, 1) for k, v in clock.items()}}
    with atomic_file(os.path.join(out, "scores.json"), overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    return report


@dataclasses.dataclass(frozen=True)
class DemoParts:
    """What the stages after the teacher share: its settings, text encoder, autoencoder and the teacher."""
    settings: Settings
    tokenizer: object
    text_encoder: object
    vae: PatchPCA
    teacher: object
    teacher_dir: str

    def overrides(self, workdir, steps, lr):
        return train_overrides(workdir, self.settings, steps, lr, self.vae.scaling_factor)

    def encode(self, captions):
        return caption_features(self.tokenizer, self.text_encoder, captions)

    def examples(self, images, captions):
        """Training example dicts of images (N, H, W, 3) in [0, 1] and their captions."""
        return training_examples(self.vae.encode(shapes.to_model_input(images)), *self.encode(captions))

    def sampler(self, pipeline_class, model, prompts, guidance=None, **control):
        """Images of `prompts` by `model` in a `pipeline_class`, as the teacher row samples (METHODS[0]; `guidance`
        replaces its CFG scale)."""
        _, _, sampler, steps, scale = METHODS[0]
        pipe = pipeline_class(model, self.text_encoder, self.tokenizer, self.vae, sampler)
        return sample(pipe, prompts, steps, scale if guidance is None else guidance, **control)


def adaptation_stages(out, parts, data, prompts, teacher_samples, quick, clock):
    """The ControlNet (pixart_jax/demo/control.py) and DreamBooth-LoRA (pixart_jax/demo/lora_concept.py) stages on
    the teacher, given its training `data` (examples, images, captions) and `teacher_samples` of `prompts`; their
    seconds go into `clock`. Returns ({grid block: images}, {"control_follow": ..., "lora_concept": ...})."""
    start = time.perf_counter()
    control_rows, control_follow = control.stage(
        data, parts.vae, parts.teacher_dir, os.path.join(out, "controlnet"), parts.overrides, parts.encode,
        lambda model, **kw: parts.sampler(PixArtControlNetPipeline, model, prompts, **kw), prompts,
        teacher_samples, quick)
    clock["controlnet_s"] = time.perf_counter() - start
    start = time.perf_counter()
    inputs = lora_concept.ConceptInputs(parts.teacher, parts.teacher_dir, os.path.join(out, "lora_concept"), data[2],
                                        parts.examples, functools.partial(parts.sampler, PixArtPipeline),
                                        parts.overrides)
    concept_rows, concept = lora_concept.stage(inputs, prompts, teacher_samples, quick)
    clock["lora_concept_s"] = time.perf_counter() - start
    return {**control_rows, **concept_rows}, {"control_follow": control_follow, "lora_concept": concept}


def evaluate(samples, prompts, vae):
    """The scores of every method's samples of `prompts`: alignment (top level and per attribute), fidelity, the
    autoencoder's fidelity ceiling and the step change of the LCM and PCM step series."""
    attributes = [p.attributes for p in prompts]
    details = {name: checker.attribute_percentages(batch, attributes) for name, batch in samples.items()}
    fidelities = {name: fidelity.fidelity_percent(batch, attributes) for name, batch in samples.items()}
    # what the autoencoder allows: the captions' own renderings passed through it
    renderings = shapes.to_model_input(np.stack([shapes.render(a) for a in attributes]))
    ceiling = fidelity.fidelity_percent(shapes.from_model_output(vae.decode(vae.encode(renderings))), attributes)
    step_change = {family: fidelity.step_change([samples[name] for name in names])
                   for family, names in pcm_stage.STEP_SERIES.items()}
    return {**{name: d["aligned"] for name, d in details.items()}, "fidelity": fidelities,
            "step_change": step_change, "fidelity_autoencoder": ceiling, "attributes": details}
