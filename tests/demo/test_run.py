"""`pixart-jax demo --quick`, as a user runs it: the whole path (data, tokenizer, T5, autoencoder, teacher training,
LCD, PCM, sampling, scoring, ControlNet, DreamBooth-LoRA) in a short run."""
import json
import math

from PIL import Image

from pixart_jax.demo.run import METHODS
from pixart_jax.demo.shapes import IMAGE_SIZE, evaluation_set
from pixart_jax.samplers import LCM, PCM, from_scheduler_config
from tests.helpers.commands import run_cli

REQUIRED = ("teacher_dpm_20_cfg", "teacher_dpm_4_cfg", "teacher_ddim_4_cfg", "lcm_4", "lcm_2", "lcm_1",  # the issues'
            "pcm_1", "pcm_2", "pcm_4", "pcm_4_cfg")


def test_quick_demo_writes_grid_and_finite_scores(tmp_path):
    run = run_cli("demo", "--quick", "--out", tmp_path)  # one CPU device, as a user runs it
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "scores.json") as f:
        scores = json.load(f)
    methods = [name for name, *_ in METHODS]
    assert set(REQUIRED) <= set(methods)
    for name in methods:
        assert math.isfinite(scores[name]) and 0 <= scores[name] <= 100, (name, scores[name])
        assert scores[name] == scores["attributes"][name]["aligned"]
        assert 0 <= scores["fidelity"][name] <= 100
        assert name in run.stdout
    assert set(scores["step_change"]) == {"lcm", "pcm"} and all(0 <= v <= 1 for v in scores["step_change"].values())
    assert 50 < scores["fidelity_autoencoder"] <= 100
    assert scores["prompts"] == [p.caption for p in evaluation_set()]
    follow = scores["control_follow"]
    assert all(0 <= follow[k] <= 100 for k in ("controlnet", "no_control")) and "control followed" in run.stdout
    concept = scores["lora_concept"]
    assert all(0 <= concept[k] <= 100 for k in ("before", "after", "others_before", "others_after"))
    assert concept["others_before"] == scores["teacher_dpm_20_cfg"] and "new concept 'sks'" in run.stdout
    assert (tmp_path / "lora_concept" / "lora" / "adapter_config.json").is_file()
    grid = Image.open(tmp_path / "grid.png")
    blocks = len(methods) + 4  # + the control images, the ControlNet's samples and the concept before / after
    across, down = min(6, blocks), -(-blocks // 6)  # labelled 6x6 blocks, six a row
    block = 6 * IMAGE_SIZE + 5 * 2
    assert grid.size == (across * block + (across + 1) * 12, down * (16 + block) + (down + 1) * 12)
    assert grid.size[0] <= 1920 and grid.size[1] <= 1080
    assert (tmp_path / "teacher" / "model" / "config.json").is_file()
    assert (tmp_path / "lcm" / "export" / "transformer" / "config.json").is_file()
    assert (tmp_path / "controlnet" / "export" / "controlnet" / "config.json").is_file()
    sampler = from_scheduler_config(tmp_path / "lcm" / "export")  # the student is a v-prediction LCM
    assert isinstance(sampler, LCM) and sampler.prediction_type == "v_prediction"
    sampler = from_scheduler_config(tmp_path / "pcm" / "pcm_2" / "export")  # a v-prediction PCM on 40 points
    assert isinstance(sampler, PCM) and sampler.prediction_type == "v_prediction" and sampler.timesteps(2)[1] == 499
