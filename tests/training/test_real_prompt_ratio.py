"""PixArt-Σ's real_prompt_ratio in the feature pipeline: each example trains on its real caption with that
probability, else on its long (VLM) one, chosen per (seed, step, row) so that seeds, hosts and resume agree; the
second caption through the record format; the checks before training."""
import itertools

import ml_dtypes
import numpy as np
import pytest

from pixart_jax.training.data import decode_example, encode_example, feature_dataset, with_caption

LENGTH, WIDTH, COUNT, LONG = 8, 2, 24, 1000.0


def make_examples(with_long=lambda i: True):
    """Example i: real caption filled with i (i % 3 + 1 tokens), its long one with LONG + i (all tokens)."""
    examples = []
    for i in range(COUNT):
        example = dict(caption=np.full((LENGTH, WIDTH), i, np.float32),
                       mask=(np.arange(LENGTH) < i % 3 + 1).astype(np.int32),
                       mean=np.full((4, 2, 2), i, np.float32), std=np.ones((4, 2, 2), np.float32),
                       img_hw=np.array([16, 16], np.float32), aspect_ratio=np.array([1.0], np.float32), bucket="1.0")
        if with_long(i):
            example.update(vlm_caption=np.full((LENGTH, WIDTH), LONG + i, np.float32),
                           vlm_mask=np.ones(LENGTH, np.int32))
        examples.append(example)
    return examples


EXAMPLES = make_examples()


def choices(dataset, steps):
    """[[(example id, took the long caption)] per step] of the first `steps` batches."""
    out = []
    for batch in itertools.islice(iter(dataset), steps):
        assert set(batch) == {"caption", "mask", "mean", "std", "img_hw", "aspect_ratio"}
        ids = batch["mean"][:, 0, 0, 0].astype(int)
        long = batch["caption"][:, 0, 0] >= LONG
        for row, (i, took_long) in enumerate(zip(ids, long)):
            source = EXAMPLES[i]
            assert batch["caption"][row, 0, 0] == (LONG + i if took_long else i)
            np.testing.assert_array_equal(batch["mask"][row], source["vlm_mask" if took_long else "mask"])
        out.append(list(zip(ids.tolist(), long.tolist())))
    return out


def long_fraction(picked):
    flat = [long for step in picked for _, long in step]
    return sum(flat) / len(flat)


@pytest.mark.parametrize("ratio, low, high", [(1.0, 0.0, 0.0), (0.0, 1.0, 1.0), (0.5, 0.44, 0.56),
                                              (0.8, 0.15, 0.25)])
def test_the_ratio_of_real_captions(ratio, low, high):
    picked = choices(feature_dataset(EXAMPLES, batch_size=4, seed=3, real_prompt_ratio=ratio), 100)
    assert low <= long_fraction(picked) <= high


def test_choices_follow_the_seed_and_step_on_every_host_and_after_resume():
    single = choices(feature_dataset(EXAMPLES, batch_size=4, seed=7, real_prompt_ratio=0.5), 14)
    assert single == choices(feature_dataset(EXAMPLES, batch_size=4, seed=7, real_prompt_ratio=0.5), 14)
    other_seed = choices(feature_dataset(EXAMPLES, batch_size=4, seed=8, real_prompt_ratio=0.5), 14)
    assert [[long for _, long in s] for s in other_seed] != [[long for _, long in s] for s in single]
    hosts = [choices(feature_dataset(EXAMPLES, batch_size=2, seed=7, shard_index=h, shard_count=2,
                                     real_prompt_ratio=0.5), 14) for h in range(2)]
    assert [a + b for a, b in zip(*hosts)] == single
    # 14 steps cross the epoch boundary (6 batches of 4 per epoch): an example's choice differs between epochs.
    iterator = iter(feature_dataset(EXAMPLES, batch_size=4, seed=7, real_prompt_ratio=0.5))
    next(iterator), next(iterator)
    resumed = iter(feature_dataset(EXAMPLES, batch_size=4, seed=7, real_prompt_ratio=0.5))
    resumed.set_state(iterator.get_state())
    assert choices(resumed, 12) == single[2:]


def test_an_example_without_a_long_caption_keeps_its_real_one():
    examples = make_examples(with_long=lambda i: i % 2 == 0)
    assert with_caption(examples[1], real=False)["caption"][0, 0] == 1
    assert with_caption(examples[2], real=False)["caption"][0, 0] == LONG + 2
    assert "vlm_caption" not in with_caption(examples[2], real=True)
    for batch in itertools.islice(iter(feature_dataset(examples, batch_size=4, seed=0, real_prompt_ratio=0.0)), 12):
        ids = batch["mean"][:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["caption"][:, 0, 0], np.where(ids % 2 == 0, LONG + ids, ids))


def test_checks_before_training():
    plain = [{k: v for k, v in e.items() if not k.startswith("vlm_")} for e in EXAMPLES]
    with pytest.raises(ValueError, match=r"real_prompt_ratio 0.5 < 1 .* example 0 of the 24 examples has none"):
        feature_dataset(plain, batch_size=4, seed=0, real_prompt_ratio=0.5)
    feature_dataset(plain, batch_size=4, seed=0, real_prompt_ratio=1.0)
    with pytest.raises(ValueError, match="captions of 8 tokens, the model takes 300 .*--max-length 300"):
        feature_dataset(EXAMPLES, batch_size=4, seed=0, max_tokens=300)
    with pytest.raises(ValueError, match="real_prompt_ratio must be in"):
        feature_dataset(EXAMPLES, batch_size=4, seed=0, real_prompt_ratio=1.5)


def test_record_round_trip_of_the_long_caption():
    rng = np.random.default_rng(0)
    caption, long = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    mean = rng.normal(size=(4, 2, 2)).astype(np.float32)
    fields = dict(key="a.png", caption=caption, mean=mean, std=mean, img_hw=(16, 16), bucket="1.0", max_length=9)
    example = decode_example(encode_example(**fields, vlm_caption=long))
    stored = long.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(example["vlm_caption"], np.concatenate([stored, stored[-1:], stored[-1:]]))
    np.testing.assert_array_equal(example["vlm_mask"], [1] * 7 + [0] * 2)
    np.testing.assert_array_equal(example["mask"], [1] * 3 + [0] * 6)
    assert "vlm_caption" not in decode_example(encode_example(**fields))
