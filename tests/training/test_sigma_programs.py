"""LCD, PCM, ControlNet and LoRA training on a PixArt-Σ teacher through the same commands: a tiny random Σ base
(300-token captions, no micro-conditions, position-embedding interpolation 2 as Σ 1024-MS) runs two steps of each
program, and what each exports keeps the Σ settings and takes 300-token captions."""
import json

import numpy as np
import pytest

from pixart_jax.models.transformer_config import PRESETS, SIGMA_TOKENS
from pixart_jax.weights.controlnet import load_controlnet
from pixart_jax.weights.lora import load_lora
from pixart_jax.weights.transformer import load_transformer
from tests.helpers import transformer_io
from tests.helpers.paths import CONFIGS
from tests.helpers.trees import save_random_tiny
from train import controlnet, lcm, pcm, pretrain

TINY_SIGMA = PRESETS["tiny"].replace(max_tokens=SIGMA_TOKENS, micro_conditions=False, interpolation_scale=2.0)
QUICK = ["steps=2", "checkpoint_every=2", "logging.progress=false", "data.synthetic_buckets=[1.0]",
         "checkpoint.async_save=false", "sample.every=0", "optimizer.name=came", "data.latent_scale=0.13025"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_random_tiny(tmp_path_factory.mktemp("base") / "tiny-sigma", config=TINY_SIGMA)


def forward(model):
    """The model on 300-token captions and a 6×4 latent (pe interpolation on a non-square grid), no
    micro-conditions."""
    return transformer_io.run_ours(model, transformer_io.inputs(2, 6, 4, tokens=SIGMA_TOKENS), micro=False)


def run(command, config, workdir, base_dir, *extra):
    code = command.main([str(CONFIGS / config), f"workdir={workdir}", f"model.init_from={base_dir}", *QUICK, *extra])
    assert code == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)


def exported_sigma(folder):
    """The exported transformer, after checking that it kept the Σ settings (its diffusers config too)."""
    config = json.loads((folder / "config.json").read_text())
    assert config["use_additional_conditions"] is False and config["interpolation_scale"] == 2.0
    model = load_transformer(str(folder))
    assert model.cfg == TINY_SIGMA
    return model


@pytest.mark.parametrize("command, config", [(lcm, "lcm_tiny.yaml"), (pcm, "pcm_tiny.yaml")], ids=["lcd", "pcm"])
def test_consistency_distillation_of_a_sigma_teacher(base_dir, tmp_path, command, config):
    run(command, config, tmp_path, base_dir)
    student = exported_sigma(tmp_path / "export" / "transformer")
    out = forward(student)
    assert np.isfinite(out).all() and np.abs(out - forward(load_transformer(base_dir))).max() > 0


def test_controlnet_of_a_sigma_base(base_dir, tmp_path):
    run(controlnet, "controlnet_tiny.yaml", tmp_path, base_dir)
    trained = load_controlnet(str(tmp_path / "export" / "controlnet"))
    assert trained.base.cfg == TINY_SIGMA and trained.num_copies == 1


def test_lora_of_a_sigma_base(base_dir, tmp_path):
    run(pretrain, "tiny.yaml", tmp_path, base_dir, "lora.rank=4", "lora.alpha=4", "optimizer.lr=1e-3",
        "optimizer.warmup_steps=0")
    adapted = load_lora(load_transformer(base_dir), str(tmp_path / "lora"))
    assert adapted.cfg == TINY_SIGMA
    assert np.abs(forward(adapted) - forward(load_transformer(base_dir))).max() > 0
