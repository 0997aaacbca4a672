"""The demo's shapes dataset (rendering, captions, determinism) and its procedural alignment checker."""
import collections

import numpy as np
import pytest

from pixart_jax.demo.checker import alignment_percent, attribute_percentages, detect, score
from pixart_jax.demo.shapes import (
    COLOURS,
    IMAGE_SIZE,
    KINDS,
    POSITIONS,
    SIZES,
    Attributes,
    attribute_space,
    caption,
    evaluation_set,
    from_model_output,
    make_dataset,
    parse_caption,
    render,
    to_model_input,
)

FIELDS = Attributes._fields


def box_blur(images):
    """3×3 mean filter with edge replication, (B, H, W, 3)."""
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[:, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9


def noisy(images, seed):
    return np.clip(images + np.random.default_rng(seed).normal(0, 0.05, images.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def ground_truth():
    """Every one of the 216 attribute combinations once (make_dataset is balanced), with random jitter."""
    images, _, attributes = make_dataset(len(attribute_space()), seed=0)
    assert sorted(attributes) == sorted(attribute_space())
    return images, attributes


def test_attribute_space():
    space = attribute_space()
    assert len(space) == len(set(space)) == len(KINDS) * len(COLOURS) * len(SIZES) * len(POSITIONS) == 216


def test_evaluation_set_covers_every_value():
    prompts = evaluation_set()
    assert len(prompts) == 36 and len({p.seed for p in prompts}) == 36 and prompts == evaluation_set()
    for field, values in zip(FIELDS, (KINDS, COLOURS, SIZES, POSITIONS)):
        counts = collections.Counter(getattr(p.attributes, field) for p in prompts)
        assert set(counts) == set(values) and min(counts.values()) >= 4, (field, counts)
    for p in prompts:
        assert parse_caption(p.caption) == p.attributes


def test_caption_round_trip():
    assert caption(Attributes("circle", "red", "small", "top left")) == "a small red circle at the top left"
    assert caption(Attributes("square", "blue", "big", "center"), 1) == "a big blue square in the middle"
    for attributes in attribute_space():
        assert parse_caption(caption(attributes, 0)) == parse_caption(caption(attributes, 1)) == attributes
    for text in ("", "a small red circle", "a tiny red circle at the top", "a small red circle at the moon"):
        with pytest.raises(ValueError):
            parse_caption(text)


def test_make_dataset_is_deterministic_and_consistent():
    images, captions, attributes = make_dataset(300, seed=7)
    assert images.shape == (300, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert [parse_caption(c) for c in captions] == attributes
    again = make_dataset(300, seed=7)
    assert np.array_equal(images, again[0]) and captions == again[1] and attributes == again[2]
    other = make_dataset(300, seed=8)
    assert not np.array_equal(images, other[0]) and captions != other[1]
    assert len(set(captions)) > 216  # both phrasings occur
    assert make_dataset(0, seed=7)[0].shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_model_input_round_trip():
    images = make_dataset(4, seed=1)[0]
    model_input = to_model_input(images)
    assert model_input.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and model_input.dtype == np.float32
    assert model_input.min() >= -1 and model_input.max() <= 1
    np.testing.assert_allclose(from_model_output(model_input), images, atol=1e-6)
    assert from_model_output(np.full((1, 3, 2, 2), 3.0)).max() == 1


@pytest.mark.parametrize("corruption", ["clean", "noise", "blur", "blur+noise"])
def test_checker_reads_ground_truth(ground_truth, corruption):
    images, attributes = ground_truth
    if "blur" in corruption:
        images = box_blur(images)
    if "noise" in corruption:
        images = noisy(images, seed=3)
    percentages = attribute_percentages(images, attributes)
    assert min(percentages.values()) >= 98, percentages


def test_checker_marks_each_wrong_attribute(ground_truth):
    images, attributes = ground_truth
    images = noisy(box_blur(images), seed=4)
    rng = np.random.default_rng(5)
    values = dict(zip(FIELDS, (KINDS, tuple(COLOURS), tuple(SIZES), POSITIONS)))
    for image, truth in zip(images, attributes):
        for field in FIELDS:
            wrong = rng.choice([v for v in values[field] if v != getattr(truth, field)])
            result = score(image, truth._replace(**{field: str(wrong)}))
            assert not result["aligned"] and not result[field], (truth, field, wrong, result)
            assert all(result[f] for f in FIELDS if f != field), (truth, field, wrong, result)


def test_shuffled_captions_are_not_aligned(ground_truth):
    images, attributes = ground_truth
    shuffled = attributes[1:] + attributes[:1]  # every image gets another combination's attributes
    assert alignment_percent(images, shuffled) == 0
    assert alignment_percent(images, [caption(a) for a in attributes]) == 100  # captions work as well as attributes


def test_garbage_is_never_aligned():
    rng = np.random.default_rng(6)
    target = Attributes("circle", "red", "small", "center")
    side = (IMAGE_SIZE, IMAGE_SIZE, 3)
    garbage = [np.full(side, 0.2), np.ones(side), np.zeros(side), np.full(side, np.nan),
               np.tile(np.float32([1, 0, 0]), (IMAGE_SIZE, IMAGE_SIZE, 1)), *rng.uniform(0, 1, (20, *side)),
               *np.clip(0.5 + rng.normal(0, 0.3, (10, IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 1)]
    for image in garbage:
        assert detect(image) is None
        result = score(image, target)
        assert not any(result[f] for f in (*FIELDS, "aligned"))
    for malformed in (np.zeros((IMAGE_SIZE, IMAGE_SIZE)), np.zeros((IMAGE_SIZE, IMAGE_SIZE, 4)), np.zeros((0, 0, 3))):
        assert detect(malformed) is None
    assert alignment_percent(np.stack(garbage[:5]), [target] * 5) == 0
    with pytest.raises(ValueError):
        attribute_percentages(np.stack(garbage[:2]), [target])


def test_render_is_what_the_checker_reads():
    for prompt in evaluation_set():
        assert detect(render(prompt.attributes)) == prompt.attributes
