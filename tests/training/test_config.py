"""Training configs: every shipped YAML validates; unknown keys, wrong types, missing values, non-finite numbers
and values out of range fail early."""

import pytest

from pixart_jax.training import controlnet, dreambooth, lcm, pcm
from pixart_jax.training.config import RANGES, ConfigError, LoRAConfig, _flat, load_config, to_dict
from tests.helpers.paths import CONFIGS

YAMLS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    programs = {"lcm_": lcm.load_config, "pcm_": pcm.load_config, "controlnet_": controlnet.load_config,
                "dreambooth_": dreambooth.load_config}  # they add `lcm:`, `pcm:`, `controlnet:`, `dreambooth:`
    load = next((f for prefix, f in programs.items() if path.name.startswith(prefix)), load_config)
    cfg = load(path, ["workdir=/tmp/x"])
    assert cfg.steps >= 1 and cfg.checkpoint_every >= 1 and isinstance(cfg.seed, int)


def test_shipped_configs_cover_the_released_stages():
    assert {"tiny.yaml", "pixart_256.yaml", "pixart_512.yaml", "pixart_1024_ms.yaml",
            "finetune.yaml"} <= {p.name for p in YAMLS}


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "tiny.yaml",
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
    ("optimizer.lr=nan", r"optimizer.lr must be a finite number, got nan$"),
    ("optimizer.lr=inf", r"optimizer.lr must be a finite number, got inf$"),
    ("optimizer.lr=-1", r"optimizer.lr must be at least 0, got -1.0$"),
    ("optimizer.b2=1", r"optimizer.b2 must be in \[0, 1\), got 1.0$"),
    ("model.caption_dropout=-0.5", r"model.caption_dropout must be in \[0, 1\], got -0.5$"),
    ("optimizer.grad_clip=0", r"optimizer.grad_clip must be > 0, got 0.0$"),
    ("seed=99999999999999999999", r"seed must be in \[0, 4294967295\], got 99999999999999999999$"),
    ("seed=-1", r"seed must be in \[0, 4294967295\], got -1$"),
    ("mesh.fsdp=0", "mesh.fsdp must be at least 1, got 0$"),
    ("mesh.data=0", r"mesh.data must be -1 \(every device mesh.fsdp leaves\) or at least 1$"),
    ("mesh.data=-2", "mesh.data must be at least -1, got -2$"),
])
def test_bad_configs_fail_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.yaml", [override])


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


@pytest.mark.parametrize("load, override, message", [
    (lcm.load_config, "lcm.guidance=nan", r"invalid LCD config: lcm.guidance must be a finite number, got nan$"),
    (lcm.load_config, "lcm.target_decay=1.5", r"lcm.target_decay must be in \[0, 1\], got 1.5$"),
    (pcm.load_config, "pcm.discriminator.lr=-inf", "pcm.discriminator.lr must be a finite number, got -inf"),
    (pcm.load_config, "pcm.null_caption_prob=2", r"pcm.null_caption_prob must be in \[0, 1\], got 2.0"),
    (controlnet.load_config, "controlnet.copies=2", "controlnet.copies must be at most the base's depth - 1 = 1$"),
    (controlnet.load_config, "controlnet.copies=0", "controlnet.copies must be at least 1, got 0$"),
])
def test_program_sections_are_range_checked(load, override, message):
    with pytest.raises(ConfigError, match=message):
        load(None, ["workdir=w", "steps=1", "checkpoint_every=1", "seed=0", "model.caption_dropout=0", override])


def test_every_range_names_a_numeric_setting():
    settings = {}
    for schema in (lcm.LCMTrainConfig, pcm.PCMTrainConfig, controlnet.ControlNetTrainConfig,
                   dreambooth.DreamBoothTrainConfig):
        settings.update(_flat(to_dict(schema(workdir="w", steps=1, checkpoint_every=1, seed=0, lora=LoRAConfig()))))
    assert not set(RANGES) - set(settings)
    assert all(isinstance(settings[key], (int, float)) and not isinstance(settings[key], bool) for key in RANGES)


@pytest.mark.parametrize("load", [load_config, lcm.load_config])
def test_the_old_lcd_section_is_named_with_its_new_name(load, tmp_path):
    (tmp_path / "old.yaml").write_text("workdir: w\nsteps: 1\ncheckpoint_every: 1\nseed: 0\nlcd:\n  guidance: 3\n")
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "old.yaml")
    assert str(error.value) == (f"the `lcd:` section is now `lcm:` (LCM distillation: python -m train.lcm); rename "
                                f"it (in {tmp_path / 'old.yaml'})")
    with pytest.raises(ConfigError, match="^the `lcd:` section is now `lcm:`"):
        load(None, ["workdir=w", "lcd.guidance=3"])
