"""Training configs: every shipped YAML validates; unknown keys, wrong types and missing values fail early."""

import pytest

from pixart_jax.training import controlnet, lcm, pcm
from pixart_jax.training.config import ConfigError, load_config, to_dict
from tests.helpers.paths import CONFIGS

CONFIGS = sorted((CONFIGS).glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    programs = {"lcm_": lcm.load_config, "pcm_": pcm.load_config,
                "controlnet_": controlnet.load_config}  # they add `lcm:`, `pcm:`, `controlnet:`
    load = next((f for prefix, f in programs.items() if path.name.startswith(prefix)), load_config)
    cfg = load(path, ["workdir=/tmp/x"])
    assert cfg.steps >= 1 and cfg.checkpoint_every >= 1 and isinstance(cfg.seed, int)


def test_shipped_configs_cover_the_released_stages():
    assert {"tiny.yaml", "pixart_256.yaml", "pixart_512.yaml", "pixart_1024_ms.yaml",
            "finetune.yaml"} <= {p.name for p in CONFIGS}


def test_overrides_are_typed():
    cfg = load_config(CONFIGS[0].parent / "tiny.yaml",
                      ["workdir=runs/t", "steps=8", "optimizer.lr=0.5", "mesh.fsdp=2", "model.remat=block"])
    assert (cfg.workdir, cfg.steps, cfg.optimizer.lr, cfg.mesh.fsdp, cfg.model.remat) == ("runs/t", 8, 0.5, 2, "block")
    assert to_dict(cfg)["steps"] == 8


@pytest.mark.parametrize("override, message", [
    ("stepz=3", "stepz"),
    ("optimizer.learning_rate=1", "learning_rate"),
    ("steps=many", "steps"),
    ("model.remat=maybe", "remat"),
    ("model.preset=huge", "preset"),
    ("mesh.rules.kernel_in=model", "unknown mesh axes"),
    ("steps=0", "steps must be at least 1"),
    ("model.prediction_type=sample",
     r"Invalid value .sample., expected one of \[epsilon, v_prediction\]\n *full_key: model.prediction_type"),
    ("data.latent_scale=0", "data.latent_scale must be > 0"),
    ("steps", "key=value"),
])
def test_bad_configs_fail_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS[0].parent / "tiny.yaml", [override])


def test_required_keys_must_be_given():
    with pytest.raises(ConfigError, match="workdir|Missing"):
        load_config(None, ["steps=1", "checkpoint_every=1", "seed=0"])
    cfg = load_config(None, ["workdir=w", "steps=1", "checkpoint_every=1", "seed=0"])
    assert cfg.model.preset == "tiny"


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("workdir: w\nsteps: [1, 2]\n")
    with pytest.raises(ConfigError, match="steps"):
        load_config(tmp_path / "bad.yaml")
