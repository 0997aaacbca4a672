"""Training data: the feature records written by `train.extract_features` and the Grain pipeline over them.

On disk (one directory): `shard-NNNNN.array_record` files of encoded examples (ArrayRecord, group size 1, so any
record is one seek away), each with a `shard-NNNNN.json` index listing its records' keys and buckets in order,
plus `manifest.json` (settings, failed images). A shard counts only once its index exists: the writer renames
the index into place after closing the record file, so an interrupted shard is invisible and redone.

Example dicts (what `read_examples(...)[i]` returns and what in-memory sources hold):
  caption (L, C) float32 — T5 last hidden states; mask (L,) int32 0/1; mean, std (4, h, w) float32 — the VAE
  posterior, unscaled (the trainer multiplies its sample by 0.18215); img_hw (2,) float32 — the original image's
  [height, width]; aspect_ratio (1,) float32 — float(bucket); bucket str — the aspect-ratio bucket key; for
  ControlNet training also control_mean, control_std (4, h, w) float32 — the VAE posterior of the image's edge map
  (`train.extract_features --control canny|hed`), unscaled like mean/std; when the data gave each image a second,
  long caption (PixArt-Σ's VLM caption, the index's `sharegpt4v` field) also vlm_caption (L, C) float32 and
  vlm_mask (L,) int32 of it, `caption` then being the short real one (the index's `prompt`).
A record stores only the caption's valid tokens, in bfloat16; reading pads it back to L tokens by repeating the
last valid token with mask 0, as PixArt's InternalData loader pads short features
(`diffusion/data/datasets/InternalData.py`). The padded
positions are masked out of cross-attention, so their values never reach the model.
"""
import collections
import json
import os
import struct
import sys
import threading
import warnings

import grain
import ml_dtypes
import numpy as np

MAGIC = b"PXF1"
SHARD_PREFIX = "shard-"
MANIFEST = "manifest.json"
# Batches are large (a 1024 px batch is tens of MB): a few in flight keep the device fed without hoarding memory.
READ_THREADS = 4
PREFETCH_BATCHES = 8
REQUIRED_FIELDS = ("caption", "mask", "mean", "std", "img_hw", "aspect_ratio")
CONTROL_FIELDS = ("control_mean", "control_std")  # ControlNet training only
VLM_FIELDS = ("vlm_caption", "vlm_mask")  # the second (long) caption: read by the loader, never batched
FLOAT_FIELDS = tuple(name for name in REQUIRED_FIELDS if name != "mask") + CONTROL_FIELDS
# The random stream of the per-example caption choice (data.real_prompt_ratio), apart from the epoch shuffles'.
CAPTION_CHOICE_STREAM = 1


class CaptionError(ValueError):
    """Features whose captions do not suit the training: another length than the model's, or no second caption
    where data.real_prompt_ratio < 1 asks for one."""


def shard_paths(directory, number):
    """(record file, index file) of shard `number` in `directory`."""
    stem = os.path.join(os.fspath(directory), f"{SHARD_PREFIX}{number:05d}")
    return stem + ".array_record", stem + ".json"


def finished_shards(directory):
    """{shard number: its index dict} of every shard whose index file exists, in shard order."""
    shards = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith(SHARD_PREFIX) and name.endswith(".json"):
            path = os.path.join(directory, name)
            with open(path) as f:
                shards[int(name[len(SHARD_PREFIX):-len(".json")])] = json.load(f)
    return shards


def _dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def encode_example(*, key, caption, mean, std, img_hw, bucket, max_length, control_mean=None, control_std=None,
                   vlm_caption=None):
    """One record: `caption` (and the second caption `vlm_caption`, when given) holds only the valid tokens (n, C)
    (stored bfloat16), mean/std (4, h, w) as given, and the control image's control_mean/control_std (4, h, w)
    when given.

    Layout: MAGIC, little-endian uint32 header length, JSON header (scalars, and name/dtype/shape of each array),
    then the arrays' raw bytes in header order.
    """
    arrays = {"caption": np.asarray(caption).astype(ml_dtypes.bfloat16), "mean": np.asarray(mean),
              "std": np.asarray(std)}
    if control_mean is not None:
        arrays.update(control_mean=np.asarray(control_mean), control_std=np.asarray(control_std))
    if vlm_caption is not None:
        arrays["vlm_caption"] = np.asarray(vlm_caption).astype(ml_dtypes.bfloat16)
    header = json.dumps({"key": key, "bucket": bucket, "img_hw": [int(v) for v in img_hw], "max_length": max_length,
                         "arrays": [[name, str(a.dtype), list(a.shape)] for name, a in arrays.items()]}).encode()
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    return MAGIC + struct.pack("<I", len(header)) + header + body


def decode_example(record):
    """The example dict of one record written by `encode_example` (see the module docstring)."""
    if record[:4] != MAGIC:
        raise ValueError(f"not a pixart-jax feature record (starts with {record[:4]!r}, expected {MAGIC!r})")
    (size,) = struct.unpack("<I", record[4:8])
    header = json.loads(record[8:8 + size])
    arrays, offset = {}, 8 + size
    for name, dtype, shape in header["arrays"]:
        dtype = _dtype(dtype)
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(record, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    caption, mask = _padded(arrays["caption"], header["max_length"])
    example = {"caption": caption, "mask": mask, "mean": arrays["mean"].astype(np.float32),
               "std": arrays["std"].astype(np.float32), "img_hw": np.asarray(header["img_hw"], np.float32),
               "aspect_ratio": np.asarray([float(header["bucket"])], np.float32), "bucket": header["bucket"]}
    example.update({name: arrays[name].astype(np.float32) for name in CONTROL_FIELDS if name in arrays})
    if "vlm_caption" in arrays:
        example["vlm_caption"], example["vlm_mask"] = _padded(arrays["vlm_caption"], header["max_length"])
    return example


def _padded(valid, length):
    """(caption (length, C) float32, mask (length,) int32) of the valid tokens (n, C), padded as the module says."""
    valid = valid.astype(np.float32)
    caption = np.concatenate([valid, np.repeat(valid[-1:], length - len(valid), axis=0)])
    return caption, (np.arange(length) < len(valid)).astype(np.int32)


def _warn_unindexed(directory, shards):
    """One warning naming the record files in `directory` that have no index (an interrupted shard: skipped)."""
    named = {os.path.basename(shard_paths(directory, number)[0]) for number in shards}
    unindexed = sorted(name for name in os.listdir(directory)
                       if name.startswith(SHARD_PREFIX) and name.endswith(".array_record") and name not in named)
    if unindexed:
        listed = "; ".join(f"{name}: it has no index {name[:-len('.array_record')]}.json" for name in unindexed)
        warnings.warn(f"{directory}: skipping {listed} (an interrupted shard, which re-running "
                      "train.extract_features redoes)", stacklevel=3)


def _open_records(paths):
    """Grain's source over the record files of [(record file, index file)]; a one-line ValueError naming a
    damaged one."""
    try:
        return grain.sources.ArrayRecordDataSource([records for records, _ in paths])
    except RuntimeError as e:
        for records, index in paths:
            try:
                grain.sources.ArrayRecordDataSource([records])
            except RuntimeError:
                raise ValueError(f"{records} is damaged (truncated or corrupted: {e}); delete it and "
                                 f"{os.path.basename(index)}, and re-run train.extract_features to encode its "
                                 "images again") from None
        raise


class FeatureSource:
    """Random-access source (Grain's `RandomAccessDataSource` protocol) over a directory of feature records.

    `buckets[i]` and `keys[i]` come from the shard indexes, so grouping by bucket reads no record.
    """

    def __init__(self, directory):
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"feature directory {directory} does not exist")
        shards = finished_shards(directory)
        if not shards:
            raise ValueError(f"{directory} holds no finished shard ({SHARD_PREFIX}NNNNN.json): "
                             "write it with `python -m train.extract_features`")
        _warn_unindexed(directory, shards)
        self.directory = directory
        self.keys = tuple(key for shard in shards.values() for key, _ in shard["records"])
        self.buckets = tuple(bucket for shard in shards.values() for _, bucket in shard["records"])
        self._records = _open_records([shard_paths(directory, number) for number in shards])
        if len(self._records) != len(self.keys):
            raise ValueError(f"{directory}: the shard files hold {len(self._records)} records, "
                             f"their indexes list {len(self.keys)}")

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        return decode_example(self._records[index])

    def __repr__(self):
        return f"FeatureSource({self.directory!r}, {len(self)} examples)"


def read_examples(directory):
    """The examples of a directory written by `train.extract_features`, as a random-access Grain source."""
    return FeatureSource(directory)


def _bucket_ids(source):
    buckets = getattr(source, "buckets", None)
    if buckets is None:
        buckets = []
        for i, example in enumerate(source):
            if "bucket" not in example:
                raise ValueError(f"example {i} has no 'bucket' key (it has {sorted(example)})")
            buckets.append(example["bucket"])
    names, ids = np.unique(np.asarray(buckets, dtype=str), return_inverse=True)
    return names, ids


class BucketBatchPlan(grain.MapDataset):
    """Step -> this host's example indices, an infinite MapDataset (random access, so resume is exact).

    Epoch e visits a permutation of all examples seeded by (seed, e) and drops each one into its bucket; a bucket
    that reaches the global batch size (batch_size x shard_count) is emitted as the next batch and emptied, as
    PixArt's AspectRatioBatchSampler does. Partial buckets left at the end of an epoch are dropped (drop_last):
    a bucket with fewer examples than a global batch is never seen. Every epoch has the same number of batches.
    Host `shard_index` takes the slice [shard_index x batch_size, (shard_index + 1) x batch_size) of each global
    batch, so the hosts' batches at a step are disjoint and together form the one-host global batch.
    """

    def __init__(self, bucket_ids, *, batch_size, seed, shard_index, shard_count):
        super().__init__()
        self._ids = np.asarray(bucket_ids)
        self._global = batch_size * shard_count
        self._host = slice(shard_index * batch_size, (shard_index + 1) * batch_size)
        self._seed = seed
        self.steps_per_epoch = int(sum(np.bincount(self._ids) // self._global)) if len(self._ids) else 0
        if self.steps_per_epoch == 0:
            raise ValueError(f"no bucket holds a global batch of {self._global} examples "
                             f"(batch_size {batch_size} x shard_count {shard_count}; bucket sizes "
                             f"{np.bincount(self._ids).tolist() if len(self._ids) else []})")
        self._epochs = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return sys.maxsize

    def __getstate__(self):  # Grain pickles datasets into its worker processes; a lock does not pickle
        return dict(self.__dict__, _lock=None, _epochs=None)

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), _epochs=collections.OrderedDict())

    def epoch_plan(self, epoch):
        """(steps_per_epoch, global batch) int64 example indices of one epoch, all hosts."""
        with self._lock:
            if epoch not in self._epochs:
                self._epochs[epoch] = self._plan(epoch)
                if len(self._epochs) > 2:  # reader threads work on at most the current and the next epoch
                    self._epochs.popitem(last=False)
            return self._epochs[epoch]

    def _plan(self, epoch):
        order = np.random.default_rng([self._seed, epoch]).permutation(len(self._ids))
        pending, batches = collections.defaultdict(list), []
        for index, bucket in zip(order.tolist(), self._ids[order].tolist()):
            pending[bucket].append(index)
            if len(pending[bucket]) == self._global:
                batches.append(pending.pop(bucket))
        return np.asarray(batches, np.int64)

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        epoch, position = divmod(step, self.steps_per_epoch)
        return self.epoch_plan(epoch)[position, self._host]

    def real_captions(self, step, ratio):
        """(batch_size,) bool: which of this host's examples at `step` train on their real caption rather than
        the long one, each with probability `ratio` (PixArt-Σ's real_prompt_ratio). A function of (seed, step)
        drawn over the global batch, so resuming and any host count give the same choices."""
        draws = np.random.default_rng([self._seed, CAPTION_CHOICE_STREAM, step]).random(self._global)
        return draws[self._host] < ratio

    def __str__(self):
        return f"BucketBatchPlan(global_batch={self._global}, host={self._host}, seed={self._seed})"


def stack_examples(examples):
    """One batch dict: every field but `bucket` stacked along a new leading axis, floats as float32."""
    batch = {}
    missing = [name for name in REQUIRED_FIELDS if name not in examples[0]]
    if missing:
        raise ValueError(f"example lacks {missing} (it has {sorted(examples[0])})")
    for name in examples[0]:
        if name == "bucket":
            continue
        values = [np.asarray(example[name]) for example in examples]
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch field {name!r}: shapes {sorted(shapes)} differ within one bucket")
        stacked = np.stack(values)
        batch[name] = stacked.astype(np.float32) if name in FLOAT_FIELDS else stacked
    batch["mask"] = batch["mask"].astype(np.int32)
    return batch


def with_caption(example, real):
    """`example` training on its real caption (`real`, or when it has no second one), else on its long one
    (vlm_caption / vlm_mask); without the second caption's fields either way."""
    chosen = {k: v for k, v in example.items() if k not in VLM_FIELDS}
    if not real and "vlm_caption" in example:
        chosen.update(caption=example["vlm_caption"], mask=example["vlm_mask"])
    return chosen


class _LoadBatch(grain.transforms.MapWithIndex):
    """Step and its example indices -> the batch, each example on the caption the plan picks for it."""

    def __init__(self, source, plan, real_prompt_ratio):
        self._source, self._plan, self._ratio = source, plan, real_prompt_ratio

    def map_with_index(self, step, indices):
        real = self._plan.real_captions(step, self._ratio)
        return stack_examples([with_caption(self._source[int(i)], bool(r)) for i, r in zip(indices, real)])


def check_captions(source, *, real_prompt_ratio=1.0, max_tokens=None):
    """A CaptionError before training when example 0 of `source` has captions of another length than the model's
    `max_tokens`, or no second caption while `real_prompt_ratio` < 1 asks for one."""
    first = source[0]
    length = np.shape(first["caption"])[0]
    name = source.directory if isinstance(source, FeatureSource) else f"the {len(source)} examples"
    if max_tokens is not None and length != max_tokens:
        raise CaptionError(f"{name}: captions of {length} tokens, the model takes {max_tokens} (extract the "
                         f"features with train.extract_features --max-length {max_tokens})")
    if real_prompt_ratio < 1 and "vlm_caption" not in first:
        raise CaptionError(f"data.real_prompt_ratio {real_prompt_ratio} < 1 trains on a second, long caption per "
                         f"image, but example 0 of {name} has none: give the index records a `sharegpt4v` caption and "
                         "extract again, or set data.real_prompt_ratio=1")


def feature_dataset(source, *, batch_size, seed, shard_index=0, shard_count=1, real_prompt_ratio=1.0,
                    max_tokens=None):
    """An infinite `grain.IterDataset` of this host's batches (dicts of stacked NumPy arrays, no `bucket`).

    source: a directory written by `train.extract_features`, or a sequence of example dicts (module docstring).
    Every batch comes from one bucket; the order is a function of (seed, shard_index, shard_count) only, and
    reshuffled each epoch; leftovers of each epoch's buckets are dropped (see BucketBatchPlan). Each example
    trains on its real caption with probability `real_prompt_ratio`, else on its long one (`vlm_caption`; the
    real one where an example has none), drawn per (seed, step, row of the global batch). `max_tokens`: the
    model's caption length, checked against the source's. Resume with `it.set_state(state)` on a fresh
    iterator, `state` taken with `it.get_state()`.
    """
    if batch_size < 1 or shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need batch_size >= 1 and 0 <= shard_index < shard_count, got batch_size {batch_size}, "
                         f"shard_index {shard_index}, shard_count {shard_count}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= real_prompt_ratio <= 1:
        raise ValueError(f"real_prompt_ratio must be in [0, 1], got {real_prompt_ratio!r}")
    if isinstance(source, (str, os.PathLike)):
        source = read_examples(source)
    _, ids = _bucket_ids(source)
    plan = BucketBatchPlan(ids, batch_size=batch_size, seed=int(seed), shard_index=shard_index,
                           shard_count=shard_count)
    check_captions(source, real_prompt_ratio=real_prompt_ratio, max_tokens=max_tokens)
    options = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)
    return plan.map_with_index(_LoadBatch(source, plan, real_prompt_ratio)).to_iter_dataset(options)


def feature_batch_shapes(cfg, model_cfg, latent_hw):
    """{field: (per-example shape, dtype)} of a feature batch (training/data.py): T5 features and VAE posterior."""
    h, w = latent_hw
    return {"caption": ((model_cfg.max_tokens, model_cfg.caption_channels), np.float32),
            "mask": ((model_cfg.max_tokens,), np.int32),
            "mean": ((model_cfg.in_channels, h, w), np.float32), "std": ((model_cfg.in_channels, h, w), np.float32),
            "img_hw": ((2,), np.float32), "aspect_ratio": ((1,), np.float32)}
