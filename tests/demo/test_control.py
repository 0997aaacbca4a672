"""The demo's ControlNet stage pieces: control prompts that move the shape, the follow score on rendered shapes,
layout-free captions, and Canny edge latents."""
import numpy as np

from pixart_jax.demo import control, shapes
from pixart_jax.demo.patch_pca import PatchPCA


def test_control_shapes_move_and_rendered_targets_are_followed():
    prompts = shapes.evaluation_set()
    targets = [control.control_attributes(p.attributes) for p in prompts]
    for p, t in zip(prompts, targets):
        assert (t.kind, t.colour) == (p.attributes.kind, p.attributes.colour)
        assert t.position != p.attributes.position and t.size != p.attributes.size
    rendered = [shapes.render(t) for t in targets]
    masks = [(image != np.float32(shapes.BACKGROUND)).any(-1) for image in rendered]
    assert control.follow(rendered, masks)[0] == 100.0  # the control shapes themselves follow their control
    captioned = [shapes.render(p.attributes) for p in prompts]
    assert control.follow(captioned, masks) == (0.0, 0.0)  # the caption's shapes never overlap it


def test_layout_free_captions_keep_kind_and_colour():
    _, captions, _ = shapes.make_dataset(200, seed=0)
    relaid = control.relaid(captions, seed=0)
    changed = [a != b for a, b in zip(captions, relaid)]
    assert 0.3 < np.mean(changed) < 0.6
    for a, b in zip(captions, relaid):
        x, y = shapes.parse_caption(a), shapes.parse_caption(b)
        assert (x.kind, x.colour) == (y.kind, y.colour)


def test_edge_latents_of_the_training_images():
    images, _, _ = shapes.make_dataset(16, seed=0)
    edges = control.edge_images(images)
    assert edges.shape == images.shape and set(np.unique(edges)) == {0.0, 1.0}
    vae = PatchPCA.fit(shapes.to_model_input(images), patch=16, components=8)
    assert control.edge_latents(images, vae).shape == (16, 8, 3, 3)
