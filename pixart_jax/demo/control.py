"""The demo's ControlNet stage: a PixArt-δ ControlNet-Transformer of the demo teacher, steered by Canny edges.

1. control latents: OpenCV Canny edges of every training image ([-1, 1], 3 channels) through the demo's autoencoder,
   as the image latents. The shapes' captions pin position and size exactly, which real captions rarely do: for
   half of the examples the ControlNet sees a caption with another position and size (same kind and colour), so
   that the layout has to come from the control, as it does for real data;
2. training: the teacher frozen, copies of its first CONTROL_COPIES blocks and the zero linears trained by
   pixart_jax.training.controlnet (the code of full-size ControlNet training);
3. scoring: each evaluation prompt gets a control image of its kind and colour at another size and position than
   its caption says; the ControlNet samples it (the teacher alone, without control, for comparison) and the
   shape drawn is compared with the control's: `control_follow` is the percentage of samples whose shape mask
   (the checker's half-maximum mask) overlaps the control shape with IoU ≥ FOLLOW_IOU.
"""
import dataclasses

import numpy as np

from pixart_jax.demo import checker, shapes
from pixart_jax.pipelines.control import canny, control_pixels
from pixart_jax.training import controlnet as training

CONTROL_COPIES = 2  # of the teacher's 4 blocks
FOLLOW_IOU = 0.5
LAYOUT_FREE = 0.5  # share of training captions whose position and size are re-drawn


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    steps: int
    lr: float = 1e-3


FULL = ControlSettings(steps=2000)
QUICK = ControlSettings(steps=20)


def edge_images(images):
    """(N, H, W, 3) float [0, 1] -> (N, H, W, 3) float [0, 1]: the Canny edge map of each, white on black."""
    edges = np.stack([canny((image * 255).round().astype(np.uint8)) for image in images])
    return np.repeat(edges[..., None], 3, axis=-1)


def edge_latents(images, vae):
    """Unscaled latents (N, C, h, w) of the images' edge maps, through `vae` (the demo's PatchPCA)."""
    edges = edge_images(images).transpose(0, 3, 1, 2)[:, :1]
    return np.asarray(vae.encode(control_pixels(edges)), np.float32)


def relaid(captions, seed):
    """The captions, a LAYOUT_FREE share of them re-drawn with a random position and size (kind, colour and
    phrasing kept)."""
    rng = np.random.default_rng(seed)
    out = []
    for text in captions:
        if rng.random() < LAYOUT_FREE:
            phrasing = 0 if text.endswith(tuple(p[0] for p in shapes.POSITION_PHRASES.values())) else 1
            attributes = shapes.parse_caption(text)._replace(position=str(rng.choice(shapes.POSITIONS)),
                                                             size=str(rng.choice(list(shapes.SIZES))))
            text = shapes.caption(attributes, phrasing)
        out.append(text)
    return out


def with_control(examples, images, captions, vae, encode, seed=0):
    """The training examples with their images' edge latents as control (exact latents: std 0) and the captions of
    `relaid` (`encode(captions)` -> (features, mask))."""
    latents = edge_latents(images, vae)
    features, mask = encode(relaid(captions, seed))
    return [dict(e, caption=f, mask=m, control_mean=c, control_std=np.zeros_like(c))
            for e, f, m, c in zip(examples, features, mask, latents)]


def control_attributes(attributes):
    """The prompt's kind and colour with the other size and a position four cells on (never the caption's)."""
    other_size = next(s for s in shapes.SIZES if s != attributes.size)
    position = shapes.POSITIONS[(shapes.POSITIONS.index(attributes.position) + 4) % len(shapes.POSITIONS)]
    return attributes._replace(size=other_size, position=position)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def follow(samples, control_masks):
    """(percent of samples whose shape overlaps its control shape with IoU ≥ FOLLOW_IOU, mean IoU in percent); a
    sample with no readable shape has IoU 0."""
    ious = []
    for image, target in zip(samples, control_masks):
        mask = checker.shape_mask(image)
        ious.append(0.0 if mask is None else iou(mask, target))
    return 100.0 * float(np.mean(np.asarray(ious) >= FOLLOW_IOU)), 100.0 * float(np.mean(ious))


def train(examples, teacher_dir, workdir, overrides, quick):
    """Trains the ControlNet of the teacher in `teacher_dir` on `examples` (see `with_control`);
    `overrides(workdir, steps, lr)` are the demo's training overrides. Returns the trained PixArtControlNet."""
    settings = QUICK if quick else FULL
    cfg = training.load_config(None, [*overrides(workdir, settings.steps, settings.lr),
                                      f"model.init_from={teacher_dir}", f"controlnet.copies={CONTROL_COPIES}"])
    return training.trained_model(training.train(cfg, examples))


def stage(data, vae, teacher_dir, workdir, overrides, encode, sample, prompts, uncontrolled, quick=False):
    """The whole stage: trains on `data` = (examples, images, captions) of the teacher's training set (see
    `with_control`, `train`), samples the evaluation prompts with their control images through
    `sample(controlnet, control_latents=...)` and scores them against `uncontrolled` (the teacher's samples of the
    same prompts and noise). Returns ({grid row: images}, the `control_follow` scores dict)."""
    controlnet = train(with_control(*data, vae, encode), teacher_dir, workdir, overrides, quick)
    targets = [shapes.render(control_attributes(p.attributes)) for p in prompts]
    latents = vae.scaling_factor * edge_latents(np.stack(targets), vae)
    controlled = sample(controlnet, control_latents=latents)
    masks = [(t != np.asarray(shapes.BACKGROUND, np.float32)).any(-1) for t in targets]
    (ours, ours_iou), (base, base_iou) = follow(controlled, masks), follow(uncontrolled, masks)
    rows = {"control (canny)": edge_images(np.stack(targets)), "controlnet_dpm_20_cfg": controlled}
    scores = {"controlnet": ours, "no_control": base, "mean_iou": {"controlnet": ours_iou, "no_control": base_iou},
              "iou_threshold": FOLLOW_IOU, "copies": CONTROL_COPIES, "layout_free_captions": LAYOUT_FREE,
              "settings": dataclasses.asdict(QUICK if quick else FULL)}
    return rows, scores
