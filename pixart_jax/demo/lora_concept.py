"""The demo's DreamBooth-LoRA stage: the teacher learns a colour it never saw, named only by a rare token, from a
few images, with class-prior preservation (pixart_jax/training/dreambooth.py, the code of `python -m
train.dreambooth`).

1. instance images: `instances` shapes in the concept colour (magenta: the dataset has red, green, blue and
   yellow), captioned with TOKEN where the colour word goes ("a big sks circle at the top left"). The demo's
   word-level tokenizer reads the token as <unk>, which no training caption holds: for the teacher it means
   nothing yet;
2. class images: the teacher's own samples (the teacher row's sampler, without CFG: see `training_pairs`) of
   `class_images` training captions, as DreamBooth generates them with the base model, encoded by the
   autoencoder;
3. DreamBooth-LoRA of the teacher on the pairs (loss = instance + prior_loss_weight x class), the teacher frozen
   (ConceptSettings: the values tried are in the README);
4. scores (`scores.json["lora_concept"]`): the alignment of the 36 evaluation prompts with the token in place of
   their colour, read with the concept colour added to the checker's (`before`: the teacher, `after`: with the
   adapter), and of the usual 36 prompts before and after (`others_before`, `others_after`).
"""
import dataclasses
import os
from typing import Callable

import numpy as np

from pixart_jax.demo import checker, shapes
from pixart_jax.images import pil_images, write_png
from pixart_jax.training import dreambooth, lora_program
from pixart_jax.training.dreambooth_data import DreamBoothExamples

TOKEN = "sks"
COLOURS = {**shapes.COLOURS, TOKEN: (1.0, 0.0, 1.0)}  # the checker's colours with the concept's (magenta)
CLASS_SEED = 2000  # class image i is sampled from the noise of seed CLASS_SEED + i


@dataclasses.dataclass(frozen=True)
class ConceptSettings:
    steps: int
    instances: int = 18            # instance images: each position twice, each kind-size pair three times
    class_images: int = 128
    rank: int = 8
    lr: float = 1e-3
    prior_loss_weight: float = 2.0
    caption_dropout: float = 0.1   # the teacher's
    class_guidance: float = 1.0    # the class images' CFG scale (see `training_pairs`)


FULL = ConceptSettings(steps=150)
QUICK = ConceptSettings(steps=10, class_images=16)


def instance_attributes(count):
    """`count` attribute sets in the concept colour: positions in order, kinds and sizes in turn."""
    sizes = tuple(shapes.SIZES)
    return [shapes.Attributes(shapes.KINDS[i % 3], TOKEN, sizes[i % 2], shapes.POSITIONS[i % 9])
            for i in range(count)]


def concept_prompts(prompts):
    """The evaluation prompts with the token in place of their colour (same seeds)."""
    return [p._replace(caption=shapes.caption(p.attributes._replace(colour=TOKEN)),
                       attributes=p.attributes._replace(colour=TOKEN)) for p in prompts]


def class_prompts(captions, count):
    """`count` of the training captions (evenly spread), each with its own noise seed."""
    picked = [captions[i] for i in np.linspace(0, len(captions) - 1, count).round().astype(int)]
    return [shapes.EvaluationPrompt(c, shapes.parse_caption(c), CLASS_SEED + i) for i, c in enumerate(picked)]


@dataclasses.dataclass(frozen=True)
class ConceptInputs:
    """What the stage takes from the demo: the teacher (and its folder), the stage's workdir, the training captions,
    `make_examples(images, captions)` (images in [0, 1] -> training example dicts), `sample(model, prompts,
    guidance=None)` (evaluation-style prompts -> images in [0, 1], the teacher row's sampler, noise and, unless
    given, CFG scale) and `overrides(workdir, steps, lr)` (the demo's training overrides)."""
    teacher: object
    teacher_dir: str
    workdir: str
    captions: list
    make_examples: Callable
    sample: Callable
    overrides: Callable


def training_pairs(inputs, settings):
    """(instance examples, class examples): the instance images (also written to WORKDIR/instance/ to look at) and
    the class images the teacher samples. Those are sampled without CFG by default: they are then the teacher's
    own conditional distribution, which the diffusion loss fits; trained on CFG-sharpened images, a model sampled
    with CFG sharpens twice (measured: the usual prompts fell from 100 % to 70-89 % aligned with class images at
    CFG 4.5, to 97 % at 1)."""
    rng = np.random.default_rng(0)
    attributes = instance_attributes(settings.instances)
    images = np.stack([shapes.render(a, rng.uniform(-shapes.JITTER, shapes.JITTER, 2), COLOURS) for a in attributes])
    for i, image in enumerate(pil_images(images)):
        write_png(image, os.path.join(inputs.workdir, "instance", f"{i:02d}.png"))
    classes = class_prompts(inputs.captions, settings.class_images)
    return (inputs.make_examples(images, [shapes.caption(a) for a in attributes]),
            inputs.make_examples(inputs.sample(inputs.teacher, classes, settings.class_guidance),
                                 [p.caption for p in classes]))


def train(inputs, pairs, settings):
    """The DreamBooth-LoRA run of the teacher on `pairs` (instance, class examples; its adapter also in
    WORKDIR/lora). Returns the adapted teacher."""
    workdir = inputs.workdir
    cfg = dreambooth.load_config(None, [
        *inputs.overrides(workdir, settings.steps, settings.lr), f"model.init_from={inputs.teacher_dir}",
        f"model.caption_dropout={settings.caption_dropout}", f"lora.rank={settings.rank}",
        f"lora.alpha={settings.rank}", "lora.init=gaussian",
        f"dreambooth.instance_images={os.path.join(workdir, 'instance')}",
        f"dreambooth.instance_prompt=a {TOKEN} shape", "dreambooth.prior_preservation=true",
        "dreambooth.class_prompt=the teacher's training captions",
        f"dreambooth.prior_loss_weight={settings.prior_loss_weight}"])
    return lora_program.adapted_model(dreambooth.train(cfg, DreamBoothExamples(*pairs, cfg.data.batch_size)))


def stage(inputs, prompts, others_before, quick=False):
    """The whole stage: DreamBooth-LoRA on `training_pairs`, then the concept prompts and the usual `prompts`
    sampled with the adapter and scored against the teacher (`others_before`: its samples of `prompts`). Returns
    ({grid block: images}, the `lora_concept` scores)."""
    settings = QUICK if quick else FULL
    adapted = train(inputs, training_pairs(inputs, settings), settings)
    concept = concept_prompts(prompts)
    before, after = inputs.sample(inputs.teacher, concept), inputs.sample(adapted, concept)
    wanted, usual = [p.attributes for p in concept], [p.attributes for p in prompts]
    scores = {"before": checker.attribute_percentages(before, wanted, COLOURS)["aligned"],
              "after": checker.attribute_percentages(after, wanted, COLOURS)["aligned"],
              "others_before": checker.alignment_percent(others_before, usual),
              "others_after": checker.alignment_percent(inputs.sample(adapted, prompts), usual),
              "token": TOKEN, "colour": COLOURS[TOKEN], "settings": dataclasses.asdict(settings)}
    return {f"{TOKEN} before (teacher)": before, f"{TOKEN} after (dreambooth lora)": after}, scores
