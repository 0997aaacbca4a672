"""The Grain feature pipeline: bucket purity, determinism, per-epoch reshuffle, host sharding, exact resume, and
the on-disk records (ArrayRecord shards + indexes) read back."""
import itertools
import pickle
import re

import ml_dtypes
import numpy as np
import pytest

from pixart_jax.training.data import BucketBatchPlan, decode_example, encode_example, feature_dataset, read_examples
from pixart_jax.training.features import ShardWriter

# bucket -> latent (h, w); 11 + 7 + 5 + 1 examples, so some buckets leave leftovers and "4.0" never fills a batch.
LATENTS = {"1.0": (4, 4), "0.5": (2, 4), "2.0": (4, 2), "4.0": (8, 2)}
COUNTS = {"1.0": 11, "0.5": 7, "2.0": 5, "4.0": 1}
LENGTH, WIDTH = 6, 3


def make_examples():
    """In-memory examples; example i has mean filled with i, so a batch says which examples it holds."""
    examples = []
    for bucket, count in COUNTS.items():
        for _ in range(count):
            i = len(examples)
            h, w = LATENTS[bucket]
            valid = 1 + i % LENGTH
            examples.append(dict(caption=np.full((LENGTH, WIDTH), i, np.float32),
                                 mask=(np.arange(LENGTH) < valid).astype(np.int32),
                                 mean=np.full((4, h, w), i, np.float32), std=np.ones((4, h, w), np.float32),
                                 img_hw=np.array([8 * h + i, 8 * w], np.float32),
                                 aspect_ratio=np.array([float(bucket)], np.float32), bucket=bucket))
    return examples


EXAMPLES = make_examples()
BUCKET_OF = [e["bucket"] for e in EXAMPLES]


def ids(batch):
    return batch["mean"][:, 0, 0, 0].astype(int).tolist()


def take(iterator, count):
    return [ids(batch) for batch in itertools.islice(iterator, count)]


def test_batches_are_stacked_float32_and_from_one_bucket():
    batches = list(itertools.islice(iter(feature_dataset(EXAMPLES, batch_size=2, seed=0)), 20))
    for batch in batches:
        assert set(batch) == {"caption", "mask", "mean", "std", "img_hw", "aspect_ratio"}
        assert {BUCKET_OF[i] for i in ids(batch)} == {BUCKET_OF[ids(batch)[0]]}
        bucket = BUCKET_OF[ids(batch)[0]]
        assert batch["mean"].shape == batch["std"].shape == (2, 4, *LATENTS[bucket])
        assert batch["caption"].shape == (2, LENGTH, WIDTH) and batch["caption"].dtype == np.float32
        assert batch["mask"].dtype == np.int32 and batch["img_hw"].dtype == np.float32
        np.testing.assert_array_equal(batch["aspect_ratio"], [[float(bucket)]] * 2)
        for row, i in enumerate(ids(batch)):
            np.testing.assert_array_equal(batch["mask"][row], EXAMPLES[i]["mask"])
    assert len({BUCKET_OF[b[0]] for b in map(ids, batches)}) == 3  # "4.0" (1 example) never fills a batch


def test_epochs_drop_leftovers_and_reshuffle():
    plan = BucketBatchPlan(np.unique(BUCKET_OF, return_inverse=True)[1], batch_size=2, seed=3, shard_index=0,
                           shard_count=1)
    assert plan.steps_per_epoch == 11 // 2 + 7 // 2 + 5 // 2
    epochs = [plan.epoch_plan(e) for e in range(3)]
    for epoch in epochs:
        seen = epoch.ravel().tolist()
        assert len(seen) == len(set(seen))  # no example twice in an epoch
        per_bucket = {b: sum(BUCKET_OF[i] == b for i in seen) for b in COUNTS}
        assert per_bucket == {b: c // 2 * 2 for b, c in COUNTS.items()}
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    np.testing.assert_array_equal(plan[plan.steps_per_epoch + 4], epochs[1][4])
    # Grain pickles datasets into worker processes (mp_prefetch).
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(plan))[plan.steps_per_epoch + 4], epochs[1][4])


def test_deterministic_given_seed():
    first = take(iter(feature_dataset(EXAMPLES, batch_size=2, seed=5)), 25)
    assert first == take(iter(feature_dataset(EXAMPLES, batch_size=2, seed=5)), 25)
    assert first != take(iter(feature_dataset(EXAMPLES, batch_size=2, seed=6)), 25)


def test_hosts_get_disjoint_slices_of_the_global_batch():
    single = take(iter(feature_dataset(EXAMPLES, batch_size=4, seed=1)), 12)
    hosts = [take(iter(feature_dataset(EXAMPLES, batch_size=2, seed=1, shard_index=h, shard_count=2)), 12)
             for h in range(2)]
    for step, batch in enumerate(single):
        assert not set(hosts[0][step]) & set(hosts[1][step])
        assert hosts[0][step] + hosts[1][step] == batch


@pytest.mark.parametrize("consumed", [3, 12])  # 12 crosses the epoch boundary (10 batches of 2 per epoch)
def test_iterator_state_resumes_exactly(consumed):
    dataset = feature_dataset(EXAMPLES, batch_size=2, seed=2)
    iterator = iter(dataset)
    take(iterator, consumed)
    state = iterator.get_state()
    expected = take(iterator, 6)
    resumed = iter(feature_dataset(EXAMPLES, batch_size=2, seed=2))
    resumed.set_state(state)
    assert take(resumed, 6) == expected
    assert expected == take(iter(dataset), consumed + 6)[consumed:]


def test_bad_arguments_and_examples():
    with pytest.raises(ValueError, match="no bucket holds a global batch of 12"):
        feature_dataset(EXAMPLES, batch_size=6, seed=0, shard_count=2)
    with pytest.raises(ValueError, match="shard_index 2"):
        feature_dataset(EXAMPLES, batch_size=2, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="seed"):
        feature_dataset(EXAMPLES, batch_size=2, seed=-1)
    with pytest.raises(ValueError, match="example 1 has no 'bucket'"):
        feature_dataset([EXAMPLES[0], {"caption": 0}], batch_size=1, seed=0)
    broken = [{k: v for k, v in e.items() if k != "std"} for e in EXAMPLES]
    with pytest.raises(ValueError, match=r"lacks \['std'\]"):
        next(iter(feature_dataset(broken, batch_size=2, seed=0)))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_examples("/nowhere")


def test_record_round_trip_pads_caption_with_last_token():
    rng = np.random.default_rng(0)
    caption = rng.normal(size=(5, 7)).astype(np.float32)
    mean, std = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    example = decode_example(encode_example(key="dir/a.png", caption=caption, mean=mean, std=std, img_hw=(300, 200),
                                            bucket="1.46", max_length=9))
    stored = caption.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(example["caption"][:5], stored)
    np.testing.assert_array_equal(example["caption"][5:], np.repeat(stored[-1:], 4, axis=0))
    np.testing.assert_array_equal(example["mask"], [1] * 5 + [0] * 4)
    np.testing.assert_array_equal(example["mean"], mean)
    np.testing.assert_array_equal(example["std"], std)
    np.testing.assert_array_equal(example["img_hw"], [300, 200])
    np.testing.assert_array_equal(example["aspect_ratio"], np.float32([1.46]))
    assert example["bucket"] == "1.46" and example["mask"].dtype == np.int32
    with pytest.raises(ValueError, match="not a pixart-jax feature record"):
        decode_example(b"garbage")


def write_shards(directory):
    """EXAMPLES as feature records in `directory`; returns the shard sizes."""
    shards = []
    writer = ShardWriter(str(directory), 0, 10, shards.append)
    for i, example in enumerate(EXAMPLES):
        valid = int(example["mask"].sum())
        writer.write(f"img{i}", example["bucket"],
                     encode_example(key=f"img{i}", caption=example["caption"][:valid], mean=example["mean"],
                                    std=example["std"], img_hw=example["img_hw"], bucket=example["bucket"],
                                    max_length=LENGTH))
    writer.close()
    return shards


@pytest.mark.filterwarnings("ignore:.*skipping shard-00003")  # when feature_dataset reads it again
def test_directory_source(tmp_path):
    assert write_shards(tmp_path) == [10, 10, 4]
    (tmp_path / "shard-00003.array_record").write_bytes(b"an interrupted shard has no index")
    with pytest.warns(UserWarning) as warned:
        source = pickle.loads(pickle.dumps(read_examples(tmp_path)))
    assert len(warned) == 1 and "skipping shard-00003.array_record: it has no index shard-00003.json" in str(
        warned[0].message)
    assert len(source) == len(EXAMPLES) and source.buckets == tuple(BUCKET_OF)
    assert source.keys == tuple(f"img{i}" for i in range(len(EXAMPLES)))
    for i in (0, 13, 23):
        example = source[i]
        for name in ("caption", "mask", "mean", "std", "img_hw", "aspect_ratio", "bucket"):
            np.testing.assert_array_equal(example[name], EXAMPLES[i][name], err_msg=name)
    from_disk = take(iter(feature_dataset(str(tmp_path), batch_size=2, seed=4)), 10)
    assert from_disk == take(iter(feature_dataset(EXAMPLES, batch_size=2, seed=4)), 10)


@pytest.mark.parametrize("length", [1000, 70000])  # under ArrayRecord's 64 KiB minimum, and cut mid-file
def test_a_damaged_shard_is_a_one_line_error_naming_it(tmp_path, length):
    write_shards(tmp_path)
    shard = tmp_path / "shard-00001.array_record"
    shard.write_bytes(shard.read_bytes()[:length])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(shard))} is damaged") as error:
        read_examples(tmp_path)
    assert "\n" not in str(error.value) and "shard-00001.json" in str(error.value)
