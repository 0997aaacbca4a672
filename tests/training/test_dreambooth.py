"""`python -m train.dreambooth` on a tiny random pipeline folder (written without torch) and three instance images,
on fake CPU devices: DreamBooth-LoRA with prior preservation trains only the adapters, generates its class images
and encodes its images once (a resume makes and encodes none), full fine-tuning exports a transformer; the prior
loss is the weighted sum of the two halves' PixArt losses; bad settings are refused before anything is written."""
import dataclasses
import io
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.planning.training import abstract_batch
from pixart_jax.sharding import make_mesh
from pixart_jax.testing.random_weights import redraw_nnx
from pixart_jax.testing.stand_ins import save_pipeline
from pixart_jax.training import dreambooth_data, registry
from pixart_jax.training.data import stack_examples
from pixart_jax.training.dreambooth import PriorPreservationObjective, load_config, train
from pixart_jax.training.dreambooth_data import CLASS_PREFIX, DreamBoothExamples
from pixart_jax.training.loss import diffusion_tables, draw_training_inputs, pixart_loss
from pixart_jax.training.synthetic import synthetic_examples
from pixart_jax.weights.transformer import load_transformer
from tests.helpers.paths import CONFIGS
from train.dreambooth import main

pytest.importorskip("sentencepiece")

TINY = str(CONFIGS / "dreambooth_tiny.yaml")
FAST = ["logging.progress=false", "checkpoint.async_save=false", "dreambooth.num_class_images=4",
        "dreambooth.class_steps=2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """{"pipe": a tiny random pipeline folder, "images": three instance images of other sizes than 64 x 64}."""
    root = tmp_path_factory.mktemp("dreambooth")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i, (h, w) in enumerate([(80, 64), (64, 96), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"dog{i}.png")
    return {"pipe": save_pipeline(root / "pipe"), "images": str(root / "images")}


def overrides(inputs, workdir, *extra):
    return [f"workdir={workdir}", f"model.init_from={inputs['pipe']}", f"dreambooth.instance_images={inputs['images']}",
            *FAST, *extra]


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def stamps(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora_runs(inputs, tmp_path_factory, request):
    """DreamBooth-LoRA with prior preservation: 2 steps, then resumed to 3 steps with the cache's writers
    counted. {"first", "resumed": results, "workdir", "cache": the cache's files after the first run,
    "calls": the second run's calls of the cache writers}."""
    workdir = tmp_path_factory.mktemp("lora") / "run"
    lora = ["lora.rank=4", "lora.alpha=4", "checkpoint_every=2"]
    first = train(load_config(TINY, overrides(inputs, workdir, *lora, "steps=2")))
    cache = stamps(workdir / "dreambooth")
    calls = []
    patch = pytest.MonkeyPatch()
    for name in ("generate_class_images", "encode_set"):
        original = getattr(dreambooth_data, name)
        patch.setattr(dreambooth_data, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    try:
        resumed = train(load_config(TINY, overrides(inputs, workdir, *lora, "steps=3")))
    finally:
        patch.undo()
    return {"first": first, "resumed": resumed, "workdir": workdir, "cache": cache, "calls": calls}


def test_lora_with_prior_preservation_trains_only_the_adapters(inputs, lora_runs):
    state = lora_runs["resumed"].state
    base = nnx.to_pure_dict(nnx.state(load_transformer(inputs["pipe"]), nnx.Param))
    assert leaves_equal(base, state["frozen"])  # the base, bitwise, after 3 steps
    assert all(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(state["params"]))  # every B moved off 0
    assert "ema" not in state
    metrics = [json.loads(line) for line in (lora_runs["workdir"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert m["loss"] == pytest.approx(m["instance_loss"] + m["prior_loss"], rel=1e-6)
    folder = lora_runs["workdir"] / "lora"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}


def test_class_images_and_encodings_are_made_once(lora_runs):
    cache = lora_runs["workdir"] / "dreambooth"
    generated = [p for p in lora_runs["cache"] if p.parts[0].startswith("class-images-")]
    assert len(generated) == 4 and all(p.suffix == ".png" for p in generated)
    with Image.open(cache / generated[0]) as image:
        assert image.size == (64, 64)
    encoded = {p.parts[1] for p in lora_runs["cache"] if p.parts[0].startswith("encoded-")}
    assert encoded == {"instance", "class"}
    assert lora_runs["calls"] == []  # the resumed run generated and encoded nothing...
    assert stamps(cache) == lora_runs["cache"]  # ...and wrote nothing there
    assert lora_runs["resumed"].step == 3 and list(lora_runs["resumed"].losses) == [3]


def test_full_fine_tuning_command_exports_a_transformer(inputs, tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main([TINY, *overrides(inputs, workdir, "dreambooth.prior_preservation=false", "steps=1",
                                  "checkpoint_every=1")])
    assert code == 0, capsys.readouterr().err
    assert not list((workdir / "dreambooth").glob("class-images-*"))
    assert (workdir / "export" / "scheduler" / "scheduler_config.json").exists()
    trained = nnx.to_pure_dict(nnx.state(load_transformer(str(workdir / "export" / "transformer")), nnx.Param))
    base = nnx.to_pure_dict(nnx.state(load_transformer(inputs["pipe"]), nnx.Param))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(base), strict=True)]
    assert sum(changed) > len(changed) // 2  # every weight trains


def test_prior_loss_is_the_weighted_sum_of_the_halves_losses():
    """The objective's one forward of both halves equals PixArt's loss of the instance half plus 0.7 x that of
    the class half, each computed alone on the same draws."""
    model = redraw_nnx(PixArtTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0)), 0)
    instance = stack_examples(synthetic_examples(4, seed=1, caption_channels=32))
    classes = stack_examples(synthetic_examples(4, seed=2, caption_channels=32))
    batch = {**instance, **{CLASS_PREFIX + k: v for k, v in classes.items()}}
    objective = PriorPreservationObjective(caption_dropout=0.5, prior_loss_weight=0.7)
    tables, null, key = diffusion_tables(), np.zeros((120, 32), np.float32), jax.random.key(3)
    loss, parts = objective.loss(model, batch, key, tables, null)
    joined = {k: np.concatenate([instance[k], classes[k]]) for k in instance}
    x0, t, noise, captions = draw_training_inputs(key, joined, tables, 0.5, null)
    direct = [float(pixart_loss(model, half, tables, x0[rows], t[rows], noise[rows], captions[rows]))
              for half, rows in ((instance, slice(0, 4)), (classes, slice(4, 8)))]
    expected = direct[0] + 0.7 * direct[1]
    print(f"prior preservation loss {float(loss):.7f}, direct {expected:.7f}: relative difference "
          f"{abs(float(loss) - expected) / expected:.1e}")
    np.testing.assert_allclose([float(parts["instance_loss"]), float(parts["prior_loss"])], direct, rtol=1e-6)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_the_dreambooth_lora_step_lowers_from_shapes_alone(inputs):
    """What train.plan does (tests/planning compiles it where libtpu is): the registry finds the program by its
    section; the paired batch's class fields enter the step, lowered from the preset's shapes alone."""
    name, entry = registry.program_for(TINY)
    cfg = entry.load_config(TINY, overrides(inputs, "unused", "lora.rank=4", "mesh.fsdp=2"))
    program = entry.program(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None)))
    model, mesh = nnx.eval_shape(program.model), make_mesh(-1, 2)
    state, _ = program.abstract_state(model, mesh)
    shapes = program.batch_shapes(model.cfg, (8, 8))
    assert name == "dreambooth" and sorted(state) == ["buffers", "frozen", "opt", "params", "rng", "step"]
    assert shapes["class_mean"] == shapes["mean"] and shapes["class_caption"] == shapes["caption"]
    with jax.set_mesh(mesh):
        lowered = program.step(model, mesh).lower(state, abstract_batch(shapes, cfg.data.batch_size, mesh))
    assert "dot_general" in lowered.as_text()


def test_examples_pair_instances_with_class_images_over_whole_batches():
    instance = [{"mean": np.full(1, i), "bucket": "1.0"} for i in range(3)]
    classes = [{"mean": np.full(1, 10 + i), "bucket": "1.0"} for i in range(5)]
    examples = DreamBoothExamples(instance, classes, batch_size=4)
    assert len(examples) == 8 and examples.buckets == ("1.0",) * 8
    assert [(int(e["mean"][0]), int(e["class_mean"][0])) for e in examples] == [
        (0, 10), (1, 11), (2, 12), (0, 13), (1, 14), (2, 10), (0, 11), (1, 12)]
    assert "class_bucket" not in examples[0] and len(DreamBoothExamples(instance, batch_size=8)) == 8


def png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("override, files, message", [
    ("dreambooth.instance_images", {}, r"dreambooth.instance_images \S+ holds no image"),
    ("dreambooth.instance_images", {"fine.png": "png", "broken.png": b"not an image"},
     r"cannot read instance image \S+broken\.png"),
    ("dreambooth.class_images", {"fine.png": "png"},
     r"dreambooth.class_images \S+ holds 1 images, fewer than dreambooth.num_class_images 4"),
    ("dreambooth.class_prompt=null", None, r"dreambooth.prior_preservation needs dreambooth.class_prompt"),
    ("dreambooth.num_class_images=0", None, r"dreambooth.num_class_images must be at least 1, got 0"),
    ("dreambooth.resolution=60", None, r"dreambooth.resolution 60 must be a multiple of 16"),
    ("model.init_from=null", None, r"model.init_from must name the base model's PixArt pipeline folder"),
])
def test_bad_settings_are_refused_up_front(inputs, tmp_path, capsys, override, files, message):
    """Exit code 2, one line naming the problem, the workdir not even created. `files`: a folder of these
    (b"...": the bytes, "png": a readable image) is the value of `override`."""
    if files is not None:
        (tmp_path / "folder").mkdir()
        for name, data in files.items():
            (tmp_path / "folder" / name).write_bytes(png_bytes() if data == "png" else data)
        override = f"{override}={tmp_path / 'folder'}"
    assert main([TINY, *overrides(inputs, tmp_path / "run"), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "run").exists()
    assert re.search(message, err), err
