"""Feature extraction on generated images of varied aspect ratios (plus a truncated file and a caption-less
image) with a tiny random T5, VAE and SentencePiece tokenizer: buckets, failures, resume, and the features
against direct calls of our encoders."""
import io
import itertools
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pixart_jax.pipelines.aspect_ratios import ASPECT_RATIO_256, closest_bucket
from pixart_jax.pipelines.prompts import load_tokenizer, preprocess, tokenize
from pixart_jax.testing.stand_ins import save_t5, save_tokenizer, save_vae
from pixart_jax.training.data import feature_dataset, read_examples
from pixart_jax.weights.t5 import load_text_encoder
from pixart_jax.weights.vae import load_vae
from tests.helpers.parity import rel_error
from train.extract_features import main

encode = nnx.jit(lambda vae, images: vae.encode(images))

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

# name -> (height, width, caption); the first run sees FIRST, the second all of them.
IMAGES = {
    "square.png": (48, 48, "A photo of a CAT sitting on a red sofa"),
    "wide.png": (30, 60, "a wide panorama of mountains and a lake at sunset"),
    "sub/wide2.jpg": (40, 80, "Ein Hund läuft über die Straße https://example.com/x.png"),
    "tall.png": (64, 32, "a tall tower in a small town"),
    "square2.jpg": (50, 52, ""),
    "wider.png": (24, 90, "a very wide panorama, très beau"),
    "tall2.png": (90, 44, "an astronaut riding a horse on the moon, high quality"),
    "square3.png": (40, 40, "a photo of a cat"),
}
FIRST = ("square.png", "wide.png", "sub/wide2.jpg", "tall.png", "square2.jpg")
FAILING = {"broken.jpg": "OSError", "uncaptioned.png": "no caption"}


def write_image(folder, name, height, width, caption, seed):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def write_broken(folder):
    data = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data, format="JPEG")
    (folder / "broken.jpg").write_bytes(data.getvalue()[:300])  # a valid header, then truncated
    (folder / "broken.txt").write_text("a broken file")
    write_image(folder, "uncaptioned.png", 32, 32, None, seed=99)


def extract(models, images, out, *extra):
    return main(["--images", str(images), "--text-encoder", models["t5"], "--tokenizer", models["tokenizer"],
                 "--vae", models["vae"], "--out", str(out), "--resolution", "256", "--batch-size",
                 str(len(jax.local_devices())), "--shard-size", "3", "--t5-dtype", "float32", *extra])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"tokenizer": save_tokenizer(root / "tokenizer"), "t5": save_t5(root / "t5")[0],
            "vae": save_vae(root / "vae")[0]}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """Two runs into one folder: FIRST (+ the failing files), then every image; shard files after each run."""
    root = tmp_path_factory.mktemp("extract")
    images, out = root / "images", root / "features"
    images.mkdir()
    for seed, name in enumerate(IMAGES):
        if name in FIRST:
            write_image(images, name, *IMAGES[name], seed=seed)
    write_broken(images)
    first = extract(models, images, out)
    shards_after_first = {p: (out / p).read_bytes() for p in os.listdir(out) if p.startswith("shard-")}
    for seed, name in enumerate(IMAGES):
        if name not in FIRST:
            write_image(images, name, *IMAGES[name], seed=seed)
    # What a run killed while writing its next shard leaves: a record file without an index.
    (out / "shard-00002.array_record").write_bytes(b"interrupted")
    second = extract(models, images, out)
    return {"images": images, "out": out, "first": first, "second": second, "shards_after_first": shards_after_first}


def test_records_land_in_the_buckets_of_the_original_sizes(runs):
    source = read_examples(runs["out"])
    assert sorted(source.keys) == sorted(IMAGES)
    for key, bucket in zip(source.keys, source.buckets):
        height, width, _ = IMAGES[key]
        assert bucket == closest_bucket(height, width, ASPECT_RATIO_256)
    assert {"1.0", "0.5", "2.0"} <= set(source.buckets)
    for i, key in enumerate(source.keys):
        example = source[i]
        bucket_h, bucket_w = ASPECT_RATIO_256[example["bucket"]]
        assert example["mean"].shape == example["std"].shape == (4, bucket_h // 8, bucket_w // 8)
        np.testing.assert_array_equal(example["img_hw"], IMAGES[key][:2])
        np.testing.assert_array_equal(example["aspect_ratio"], np.float32([float(example["bucket"])]))
    for batch in itertools.islice(iter(feature_dataset(str(runs["out"]), batch_size=2, seed=0)), 6):
        assert len(set(batch["aspect_ratio"][:, 0].tolist())) == 1
        bucket_h, bucket_w = ASPECT_RATIO_256[closest_bucket(float(batch["aspect_ratio"][0, 0]), 1, ASPECT_RATIO_256)]
        assert batch["mean"].shape == (2, 4, bucket_h // 8, bucket_w // 8)


def test_unreadable_images_are_listed_and_skipped(runs):
    for run in ("first", "second"):
        failed = {f["key"]: f["error"] for f in runs[run]["failed"]}
        assert sorted(failed) == sorted(FAILING)
        for key, reason in FAILING.items():
            assert reason in failed[key]
    manifest = json.loads((runs["out"] / "manifest.json").read_text())
    assert [f["key"] for f in manifest["failed"]] == [f["key"] for f in runs["second"]["failed"]]
    assert manifest["examples"] == len(IMAGES) and runs["first"]["examples"] == len(FIRST)


def test_resume_skips_finished_work(runs):
    assert runs["second"]["skipped_done"] == len(FIRST)
    out = runs["out"]
    for name, content in runs["shards_after_first"].items():
        assert (out / name).read_bytes() == content, f"{name} was rewritten"
    assert (out / "shard-00002.json").exists()  # the interrupted shard's number was reused and finished
    assert runs["second"]["shards"] == len(runs["shards_after_first"]) // 2 + 1  # 3 new images, 3 per shard


def test_settings_must_match_to_resume(models, runs):
    with pytest.raises(ValueError, match="written with resolution=256"):
        extract(models, runs["images"], runs["out"], "--resolution", "512")
    with pytest.raises(ValueError, match="written with t5_dtype='float32'"):
        main(["--images", str(runs["images"]), "--text-encoder", models["t5"], "--tokenizer", models["tokenizer"],
              "--vae", models["vae"], "--out", str(runs["out"]), "--resolution", "256"])


def test_features_equal_direct_encoding(models, runs):
    source = read_examples(runs["out"])
    captions = [IMAGES[key][2] for key in source.keys]
    ids, mask = tokenize(load_tokenizer(models["tokenizer"]), preprocess(captions))
    hidden = np.asarray(load_text_encoder(models["t5"])(ids, mask))
    vae = load_vae(models["vae"])
    for i, key in enumerate(source.keys):
        example = source[i]
        valid = int(mask[i].sum())
        np.testing.assert_array_equal(example["mask"], mask[i])
        stored = hidden[i, :valid].astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_allclose(example["caption"][:valid], stored, rtol=2 ** -7, atol=1e-6)
        np.testing.assert_array_equal(example["caption"][valid:], np.repeat(example["caption"][valid - 1:valid],
                                                                            120 - valid, axis=0))
        # The reference extractor's resize: straight to the bucket size, bicubic, aspect ratio not kept.
        bucket_h, bucket_w = ASPECT_RATIO_256[example["bucket"]]
        image = Image.open(runs["images"] / key).convert("RGB").resize((bucket_w, bucket_h), Image.BICUBIC)
        pixels = np.asarray(image, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        mean, std = encode(vae, pixels)
        assert rel_error(example["mean"], mean[0]) <= 1e-5
        assert rel_error(example["std"], std[0]) <= 1e-5


def test_index_input_takes_sizes_from_the_index(models, tmp_path):
    images = tmp_path / "images"
    write_image(images, "a.png", 40, 40, None, seed=0)
    records = [{"path": "a.png", "prompt": "a photo of a cat", "height": 100, "width": 400},
               {"path": "missing.png", "prompt": "gone"}]
    index = tmp_path / "data_info.jsonl"
    index.write_text("\n".join(json.dumps(r) for r in records))
    manifest = extract(models, index, tmp_path / "out", "--image-root", str(images))
    assert [f["key"] for f in manifest["failed"]] == ["missing.png"]
    assert "FileNotFoundError" in manifest["failed"][0]["error"]
    source = read_examples(tmp_path / "out")
    assert source.buckets == ("0.25",)  # from the index's 100 x 400, not the file's 40 x 40
    np.testing.assert_array_equal(source[0]["img_hw"], [100, 400])
    with pytest.raises(ValueError, match="record 0 lacks \\['prompt'\\]"):
        index.write_text(json.dumps({"path": "a.png"}))
        extract(models, index, tmp_path / "out2")


@pytest.mark.parametrize("kind", ["canny", "hed"])
def test_control_latents_of_the_edge_maps(models, tmp_path, kind):
    """--control canny|hed: each record also holds the VAE posterior of the resized image's edge map."""
    from pixart_jax.models.hed import HED, STAGES
    from pixart_jax.pipelines.control import canny, control_pixels
    from pixart_jax.weights import export_weights, save_pth
    from pixart_jax.weights.keymaps.hed import hed_rules
    from pixart_jax.weights.nnx_state import flat_arrays

    images = tmp_path / "images"
    for seed, name in enumerate(("square.png", "wide.png")):
        write_image(images, name, *IMAGES[name], seed=seed)
    extra = ["--control", kind]
    if kind == "hed":
        hed = HED(rngs=nnx.Rngs(0))
        save_pth(export_weights(hed_rules([n for n, _ in STAGES]), flat_arrays(hed)), str(tmp_path / "hed.pth"))
        extra += ["--hed", str(tmp_path / "hed.pth")]
        with pytest.raises(ValueError, match="--control hed needs --hed"):
            extract(models, images, tmp_path / "nohed", "--control", "hed")
    extract(models, images, tmp_path / "out", *extra)
    source, vae = read_examples(tmp_path / "out"), load_vae(models["vae"])
    for i, key in enumerate(source.keys):
        example = source[i]
        bucket_h, bucket_w = ASPECT_RATIO_256[example["bucket"]]
        image = np.asarray(Image.open(images / key).convert("RGB").resize((bucket_w, bucket_h), Image.BICUBIC))
        if kind == "canny":
            edges = canny(image)[None, None]
        else:
            edges = np.asarray(hed(image.transpose(2, 0, 1)[None].astype(np.float32) / 255))
        mean, std = encode(vae, control_pixels(edges))
        assert example["control_mean"].shape == example["mean"].shape
        assert rel_error(example["control_mean"], mean[0]) <= 1e-5 and rel_error(example["control_std"], std[0]) <= 1e-5
    with pytest.raises(ValueError, match="written with control="):
        extract(models, images, tmp_path / "out")


def test_index_long_captions_at_sigma_length(models, tmp_path):
    """PixArt-Σ data: 300 tokens, and the index's `sharegpt4v` caption stored beside `prompt` where given."""
    images = tmp_path / "images"
    for seed, name in enumerate(("square.png", "wide.png")):
        write_image(images, name, *IMAGES[name], seed=seed)
    long = "a very long description of a photo: " + ", ".join(f"object number {i} in red" for i in range(12))
    records = [{"path": "square.png", "prompt": IMAGES["square.png"][2], "sharegpt4v": long},
               {"path": "wide.png", "prompt": IMAGES["wide.png"][2], "sharegpt4v": ""}]
    index = images / "data_info.json"
    index.write_text(json.dumps(records))
    extract(models, index, tmp_path / "out", "--max-length", "300")
    source = read_examples(tmp_path / "out")
    examples = {key: source[i] for i, key in enumerate(source.keys)}
    assert "vlm_caption" not in examples["wide.png"]
    ids, mask = tokenize(load_tokenizer(models["tokenizer"]), preprocess([records[0]["prompt"], long]), 300)
    hidden = np.asarray(load_text_encoder(models["t5"])(ids, mask))
    for row, (caption, caption_mask) in enumerate([("caption", "mask"), ("vlm_caption", "vlm_mask")]):
        example, valid = examples["square.png"], int(mask[row].sum())
        assert example[caption].shape == (300, hidden.shape[-1])
        np.testing.assert_array_equal(example[caption_mask], mask[row])
        stored = hidden[row, :valid].astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_allclose(example[caption][:valid], stored, rtol=2 ** -7, atol=1e-6)
    assert 120 < int(mask[1].sum()) < 300  # the long caption needs Σ's length
    with pytest.raises(ValueError, match="written with max_length=300"):
        extract(models, index, tmp_path / "out")
