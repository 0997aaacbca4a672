"""Feature extraction for training (PixArt-alpha `tools/extract_features.py`): images + captions -> T5 and VAE
features in ArrayRecord shards.

    extract(ExtractionSettings(images=..., text_encoder=..., tokenizer=..., vae=..., out=..., resolution=256))
    (command line: `python -m train.extract_features`)

Input: a folder searched recursively for images (png, jpg, jpeg, webp, bmp), each captioned by a same-stem `.txt`
sidecar; or a `.json` list / `.jsonl` file of records with `path` (relative to `--image-root`, default the index's
folder), `prompt`, and optionally the original `height`/`width` and a second, long caption `sharegpt4v` (the
field of PixArt-Σ's `data_info.json`: a VLM's caption, trained on with probability 1 - `data.real_prompt_ratio`;
empty or absent: the image has only its real caption).

Per image: the aspect-ratio bucket nearest to the original height/width (from the index when given, else the
image) in the 40-entry training table of `--resolution` (spec §3.6); the image resized DIRECTLY to the bucket's
[height, width] with bicubic filtering, distorting its aspect ratio, as the reference multi-scale extractor does
(spec §3.5, quirk 15) and unlike aspect-preserving resize + crop; RGB scaled to [-1, 1]; the VAE posterior
mean/std (stored fp32); the T5 last hidden states of the twice-cleaned caption, `--max-length` tokens (120 for
PixArt-α, 300 for PixArt-Σ), of which the valid
ones are stored in bf16 (record format in pixart_jax/training/data.py); the same for the long caption when the
record has one. With `control` (canny or hed), also the
VAE posterior of the resized image's edge map ([-1, 1], 3 channels: pixart_jax/pipelines/control.py) for ControlNet
training.

The encoders run data parallel: batches of one bucket, split along the batch axis over the local devices, the
weights replicated. Output: `shard-NNNNN.array_record` + `shard-NNNNN.json` (finished when its index exists) and
`manifest.json` (settings, counts, failed images with the reason). Re-running with the same --out skips every
image already in a finished shard; unreadable images are skipped, listed under `failed`, and retried on re-runs.
"""
import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from PIL import Image
from tqdm import tqdm

from pixart_jax.choices import DType
from pixart_jax.files import atomic_file
from pixart_jax.pipelines.aspect_ratios import TRAIN_TABLES, closest_bucket
from pixart_jax.pipelines.control import ControlKind, control_pixels, edge_maps
from pixart_jax.pipelines.prompts import MAX_LENGTH, load_tokenizer, preprocess, tokenize
from pixart_jax.training.data import MANIFEST, encode_example, finished_shards, shard_paths
from pixart_jax.weights.hed import load_hed
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.vae import load_vae

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Settings that change the stored features: a resumed run must use the same ones.
FEATURE_SETTINGS = ("resolution", "max_length", "clean_caption", "t5_dtype", "vae_dtype", "control")


class Item(NamedTuple):
    key: str  # unique name of the example: the image path relative to the folder / as written in the index
    path: str
    caption: str | None  # None: the folder has no caption sidecar for this image
    height: int | None = None
    width: int | None = None
    vlm_caption: str | None = None  # the long (VLM) caption, when the index gives one


def _folder_items(folder):
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(root, name)
                sidecar = os.path.splitext(path)[0] + ".txt"
                caption = None
                if os.path.isfile(sidecar):
                    with open(sidecar, encoding="utf-8") as f:
                        caption = f.read().strip()
                items.append(Item(os.path.relpath(path, folder), path, caption))
    return items


def _index_items(index, image_root):
    with open(index, encoding="utf-8") as f:
        if index.endswith(".jsonl"):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{index}: expected a list of records, got {type(records).__name__}")
    root = image_root or os.path.dirname(os.path.abspath(index))
    items = []
    for number, record in enumerate(records):
        missing = [k for k in ("path", "prompt") if k not in record]
        if missing:
            raise ValueError(f"{index}: record {number} lacks {missing} (it has {sorted(record)})")
        items.append(Item(record["path"], os.path.join(root, record["path"]), str(record["prompt"]),
                          record.get("height"), record.get("width"), record.get("sharegpt4v") or None))
    return items


def list_items(images, image_root=None):
    """The examples of an image folder (with `.txt` sidecars) or of a `.json` / `.jsonl` index."""
    if os.path.isdir(images):
        items = _folder_items(images)
    elif images.endswith((".json", ".jsonl")):
        items = _index_items(images, image_root)
    else:
        raise ValueError(f"--images {images}: expected a folder or a .json / .jsonl index")
    seen = set()
    for item in items:
        if item.key in seen:
            raise ValueError(f"{images}: image {item.key!r} is listed twice")
        seen.add(item.key)
    return items


def load_image(item, table):
    """(image (H, W, 3) uint8 at the bucket size, bucket key, original (height, width)).

    The image is resized straight to the bucket's size (aspect ratio not kept), as the reference multi-scale
    extractor does. Raises on an unreadable image (the caller records it as failed).
    """
    if item.caption is None:
        raise ValueError(f"no caption: {os.path.splitext(item.path)[0]}.txt does not exist")
    with Image.open(item.path) as image:
        image = image.convert("RGB")  # decodes the whole file: a truncated image fails here
    height, width = (int(item.height), int(item.width)) if item.height and item.width else image.size[::-1]
    bucket = closest_bucket(height, width, table)
    bucket_h, bucket_w = table[bucket]
    return np.asarray(image.resize((bucket_w, bucket_h), Image.BICUBIC)), bucket, (height, width)


def vae_pixels(images):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1], the VAE's input."""
    return np.transpose(images.astype(np.float32) / 127.5 - 1.0, (0, 3, 1, 2))


class FeatureEncoder:
    """T5, VAE (and HED) replicated on every local device; each batch is split along its leading axis over them."""

    def __init__(self, text_encoder, vae, batch_size, hed=None):
        devices = jax.local_devices()
        if batch_size % len(devices):
            raise ValueError(f"--batch-size {batch_size} is not a multiple of the {len(devices)} local devices")
        mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)
        self._rows = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        t5_graph, t5_state = nnx.split(text_encoder)
        vae_graph, vae_state = nnx.split(vae)
        self._t5_state = jax.device_put(t5_state, replicated)
        self._vae_state = jax.device_put(vae_state, replicated)
        self._t5 = jax.jit(lambda state, ids, mask: nnx.merge(t5_graph, state)(ids, mask),
                           out_shardings=self._rows)
        self._vae = jax.jit(lambda state, images: nnx.merge(vae_graph, state).encode(images),
                            out_shardings=self._rows)
        if hed is not None:
            hed_graph, hed_state = nnx.split(hed)
            self._hed_state = jax.device_put(hed_state, replicated)
            self._hed = jax.jit(lambda state, images: nnx.merge(hed_graph, state)(images), out_shardings=self._rows)

    def hed(self, images):
        """(B, 1, H, W) HED edge maps of (B, 3, H, W) images in [0, 1]."""
        return self._hed(self._hed_state, jax.device_put(images, self._rows))

    def captions(self, ids, mask):
        """(B, L, C) float32 last hidden states."""
        hidden = self._t5(self._t5_state, jax.device_put(ids, self._rows), jax.device_put(mask, self._rows))
        return np.asarray(hidden.astype(jnp.float32))

    def latents(self, images):
        """(mean, std), each (B, 4, H/8, W/8) float32."""
        mean, std = self._vae(self._vae_state, jax.device_put(images, self._rows))
        return np.asarray(mean), np.asarray(std)


class ShardWriter:
    """Appends records to numbered ArrayRecord shards; a full or final shard is closed, then its index written."""

    def __init__(self, directory, first_number, shard_size, on_shard_done):
        self._directory, self._number, self._size = directory, first_number, shard_size
        self._on_shard_done = on_shard_done
        self._writer, self._records = None, []

    def write(self, key, bucket, record):
        if self._writer is None:
            # group_size:1 makes each record individually seekable (what Grain's random access wants).
            self._writer = ArrayRecordWriter(shard_paths(self._directory, self._number)[0], "group_size:1")
        self._writer.write(record)
        self._records.append([key, bucket])
        if len(self._records) == self._size:
            self.close()

    def close(self):
        if self._writer is None:
            return
        self._writer.close()
        index = shard_paths(self._directory, self._number)[1]
        _write_json(index, {"file": os.path.basename(shard_paths(self._directory, self._number)[0]),
                            "records": self._records})
        self._on_shard_done(len(self._records))
        self._writer, self._records, self._number = None, [], self._number + 1


def _write_json(path, value):
    """Atomic: readers see the old file or the new one, never a partial one."""
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=1)


def _check_settings(out, settings):
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)["settings"]
    for name in FEATURE_SETTINGS:
        if previous.get(name) != settings[name]:
            raise ValueError(f"{out} was written with {name}={previous.get(name)!r}, this run has "
                             f"{settings[name]!r}: use the same setting or another --out")


def _prefetched(pool, function, items, depth):
    """function(item) for each item, computed `depth` ahead in `pool`, in order."""
    futures = collections.deque()
    for item in items:
        futures.append(pool.submit(function, item))
        if len(futures) >= depth:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
    images: str                 # image folder with .txt captions, or a .json/.jsonl index
    text_encoder: str           # Hugging Face T5 folder (config.json + weights)
    tokenizer: str              # T5 tokenizer folder (spiece.model)
    vae: str                    # diffusers AutoencoderKL folder
    out: str                    # output folder (re-running resumes)
    resolution: int             # 256, 512, 1024 or 2048: the training bucket table
    image_root: Optional[str] = None    # folder the index's paths are relative to (default: the index's)
    batch_size: int = 32        # images per encoder call, all devices
    shard_size: int = 512       # records per ArrayRecord file
    t5_dtype: DType = DType.bfloat16    # T5 compute dtype (the reference extracts in bfloat16)
    vae_dtype: DType = DType.float32
    clean_caption: bool = True  # False: only lower-case and strip captions
    workers: int = 4            # threads decoding and resizing images
    control: Optional[ControlKind] = None   # ControlNet control latents of each image's edge map: canny or hed
    hed: Optional[str] = None   # ControlNetHED.pth, for control hed
    max_length: int = MAX_LENGTH    # caption tokens: 120 (PixArt-α), 300 (PixArt-Σ)


def extract(args: ExtractionSettings):
    """Runs the extraction `args` describes; returns the final manifest dict."""
    settings = _settings(args)
    os.makedirs(args.out, exist_ok=True)
    _check_settings(args.out, settings)
    items = list_items(args.images, args.image_root)
    shards = finished_shards(args.out)
    done = {key for shard in shards.values() for key, _ in shard["records"]}
    pending = [item for item in items if item.key not in done]
    hed = load_hed(args.hed, DType(args.vae_dtype).jax) if args.control == ControlKind.hed else None
    encoder = FeatureEncoder(load_text_encoder(args.text_encoder, DType(args.t5_dtype).jax),
                             load_vae(args.vae, DType(args.vae_dtype).jax), args.batch_size, hed)
    manifest = {"settings": settings, "examples": len(done), "shards": len(shards),
                "skipped_done": len(items) - len(pending), "failed": []}

    def shard_done(count):
        manifest["examples"] += count
        manifest["shards"] += 1
        _write_json(os.path.join(args.out, MANIFEST), manifest)

    writer = ShardWriter(args.out, max(shards, default=-1) + 1, args.shard_size, shard_done)
    tokenizer = load_tokenizer(args.tokenizer)
    _encode_all(args, pending, lambda batch: _encode_batch(args, tokenizer, encoder, writer, batch), manifest)
    writer.close()
    _write_json(os.path.join(args.out, MANIFEST), manifest)
    return manifest


def _settings(args):
    """The settings recorded in the manifest (a resumed extraction must match them); bad choices refused."""
    if args.control == ControlKind.hed and not args.hed:
        raise ValueError("--control hed needs --hed (a ControlNetHED.pth)")
    if args.control not in (None, ControlKind.canny, ControlKind.hed):
        raise ValueError(f"--control must be canny or hed, got {args.control!r}")
    if args.max_length < 1:
        raise ValueError(f"--max-length must be positive, got {args.max_length}")
    return {"resolution": args.resolution, "max_length": args.max_length, "clean_caption": args.clean_caption,
            "t5_dtype": args.t5_dtype, "vae_dtype": args.vae_dtype, "text_encoder": args.text_encoder,
            "tokenizer": args.tokenizer, "vae": args.vae, "images": args.images, "control": args.control,
            "hed": args.hed}


def _encode_batch(args, tokenizer, encoder, writer, batch):
    """Encodes a list of (item, image, bucket, hw) of one bucket, padded to the batch size, and writes it."""
    rows = args.batch_size - len(batch)
    texts = preprocess([item.caption for item, *_ in batch], args.clean_caption) + [""] * rows
    hidden, valid = _encoded_captions(args, tokenizer, encoder, texts)
    long_hidden, long_valid = None, None
    if any(item.vlm_caption for item, *_ in batch):
        long_texts = preprocess([item.vlm_caption or "" for item, *_ in batch], args.clean_caption) + [""] * rows
        long_hidden, long_valid = _encoded_captions(args, tokenizer, encoder, long_texts)
    images = np.stack([image for _, image, _, _ in batch])
    images = np.concatenate([images, np.zeros((rows, *images.shape[1:]), np.uint8)])
    mean, std = encoder.latents(vae_pixels(images))
    control = [None, None]
    if args.control:
        edges = edge_maps(images, args.control, encoder.hed if args.control == ControlKind.hed else None)
        control = encoder.latents(np.asarray(control_pixels(edges)))
    for row, (item, _, bucket, hw) in enumerate(batch):
        control_mean, control_std = (None, None) if control[0] is None else (control[0][row], control[1][row])
        vlm_caption = long_hidden[row, :long_valid[row]] if item.vlm_caption else None
        writer.write(item.key, bucket, encode_example(
            key=item.key, caption=hidden[row, :valid[row]], mean=mean[row], std=std[row], img_hw=hw, bucket=bucket,
            max_length=args.max_length, control_mean=control_mean, control_std=control_std, vlm_caption=vlm_caption))


def _encoded_captions(args, tokenizer, encoder, texts):
    """(T5 hidden states (B, max_length, C), valid token count per row) of cleaned `texts`."""
    ids, mask = tokenize(tokenizer, texts, args.max_length)
    return encoder.captions(ids, mask), mask.sum(axis=1)  # the mask is a prefix of ones: padding on the right


def _encode_all(args, pending, encode, manifest):
    """Loads the `pending` items on worker threads, gathers them into full batches per bucket for `encode` (the
    remainders last) and lists the images that cannot be read in manifest["failed"]."""
    table = TRAIN_TABLES[args.resolution]

    def attempt(item):
        try:
            return load_image(item, table)
        except Exception as error:  # noqa: BLE001 — any unreadable image is listed, never fatal
            return f"{type(error).__name__}: {error}"

    by_bucket = collections.defaultdict(list)
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool, \
            tqdm(total=len(pending), unit="img", desc="features") as progress:
        for item, loaded in zip(pending, _prefetched(pool, attempt, pending, 4 * args.batch_size)):
            if isinstance(loaded, str):
                manifest["failed"].append({"key": item.key, "path": item.path, "error": loaded})
                progress.update(1)
                continue
            image, bucket, hw = loaded
            by_bucket[bucket].append((item, image, bucket, hw))
            if len(by_bucket[bucket]) == args.batch_size:
                encode(by_bucket.pop(bucket))
                progress.update(args.batch_size)
        for bucket in list(by_bucket):
            batch = by_bucket.pop(bucket)
            encode(batch)
            progress.update(len(batch))
