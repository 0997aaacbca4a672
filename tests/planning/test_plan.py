"""Ahead-of-time TPU plans (`python -m train.plan`, `pixart-jax plan`): compiled for real TPU slices on this CPU
through libtpu. Run by the TPU leg of CI (scripts/test-tpu.sh installs libtpu in .venv-tpu); elsewhere skipped."""
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pixart_jax import sharding
from pixart_jax.models.attention import attention
from pixart_jax.planning.plan import format_plan
from pixart_jax.planning.topologies import GIB, TopologyError, parse_topology
from pixart_jax.planning.training import plan_train_step
from pixart_jax.training.registry import PROGRAMS, program_for
from tests.helpers.commands import run_cli, run_module
from tests.helpers.paths import CONFIGS

pytest.importorskip("libtpu", reason="libtpu is not installed here (pip install '.[tpu]'; CI's TPU leg, "
                                     "scripts/test-tpu.sh, runs these tests)")

CONFIGS = CONFIGS


def hbm(output, row):
    return float(re.search(rf"^  {row} +([\d.]+)", output, re.M).group(1))


def test_the_tiny_pretraining_step_fits_a_v5e_slice():
    result = run_module("train.plan", CONFIGS / "tiny.yaml", "topology=v5e:2x2", "mesh.fsdp=2", "workdir=unused")
    assert result.returncode == 0, result.stderr[-2000:]
    # libtpu is told this machine is no TPU VM: none of its warnings about one, nor their source-location trace
    assert not re.search("TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|Source Location Trace", result.stderr), \
        result.stderr
    out = result.stdout
    assert "pretrain step of" in out and "on v5e:2x2 (v5e-4: 4 x TPU v5 lite, 16 GiB HBM each), mesh data=2 x fsdp=2" \
        in out
    assert re.search(r"^  fits +yes", out, re.M)
    assert hbm(out, "total") == pytest.approx(hbm(out, "arguments") + hbm(out, "outputs")
                                              - hbm(out, r"aliased \(donated\)") + hbm(out, "temporaries")
                                              + hbm(out, "code"), abs=0.02)
    assert hbm(out, "capacity") == 16.0
    # the largest arrays with their shardings: FSDP over the kernels' input dim
    assert re.search(r"params\.blocks\.mlp\.fc1\.kernel +\(2, 48, 192\) +float32 +P\(None, 'fsdp', None\)", out)


def test_the_lcd_step_plans_through_the_console_script():
    result = run_cli("plan", CONFIGS / "lcm_tiny.yaml", "topology=v4-8", "workdir=unused")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lcm step of" in result.stdout and "v4:2x2x1 (v4-8: 4 x TPU v4, 32 GiB HBM each)" in result.stdout
    assert re.search(r"^  (teacher|student|target)\.blocks\.", result.stdout, re.M)  # the LCD state's copies


@pytest.mark.parametrize("config, program, state_prefix", [
    ("controlnet_tiny.yaml", "controlnet", "frozen.base."),       # the ControlNet state's frozen base
    ("pcm_tiny.yaml", "pcm", "target."),                          # PCM's EMA target beside the student
])
def test_controlnet_and_pcm_steps_plan(config, program, state_prefix):
    """Every training program plans: its own model, state and batch (ControlNet's control latents) compile."""
    name, entry = program_for(CONFIGS / config)
    assert name == program
    cfg = entry.load_config(CONFIGS / config, ["workdir=unused", "mesh.fsdp=2"])
    plan = plan_train_step(cfg, entry.program, parse_topology("v5e:2x2"))
    assert plan.fits and plan.refused is None and plan.temporaries > 0
    assert any(array_name.startswith(state_prefix) for array_name, *_ in plan.largest), plan.largest


def test_the_plan_shows_what_came_saves_over_adamw():
    """Every plan lists the optimizer state per chip under each optimizer: CAME keeps one parameter-sized
    momentum and factored second moments where AdamW keeps two parameter-sized moments."""
    name, entry = program_for(CONFIGS / "tiny.yaml")
    cfg = entry.load_config(CONFIGS / "tiny.yaml", ["workdir=unused", "mesh.fsdp=1", "optimizer.name=came"])
    plan = plan_train_step(cfg, entry.program, parse_topology("v5e:1x1"))
    params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(nnx.eval_shape(entry.program(cfg).model),
                                                                 nnx.Param)))
    sizes = plan.optimizer_state
    assert plan.optimizer == "came" and sizes["adamw"] == pytest.approx(8 * params, abs=64)  # two fp32 moments
    assert 4 * params < sizes["came"] < 0.6 * sizes["adamw"], sizes
    line = next(line for line in format_plan(plan, "tiny").splitlines() if line.startswith("optimizer state"))
    assert re.fullmatch(r"optimizer state per chip \(in the arguments\): adamw [\d.]+ MiB, came [\d.]+ MiB "
                        r"\(this run\)", line)


def test_a_lora_fine_tune_plans_on_the_abstract_base():
    """A LoRA config plans without its base (model.init_from is never read: the preset's shapes stand in for it);
    the adapters train in float32, the base is frozen in the compute dtype, and there is no EMA."""
    name, entry = program_for(CONFIGS / "tiny.yaml")
    cfg = entry.load_config(CONFIGS / "tiny.yaml", ["workdir=unused", "mesh.fsdp=2", "model.init_from=/absent/base",
                                                    "lora.rank=16", "sample.every=0", "model.compute_dtype=bfloat16"])
    plan = plan_train_step(cfg, entry.program, parse_topology("v5e:2x2"))
    assert plan.fits and plan.refused is None
    dtypes = {array_name.split(".")[0]: dtype for array_name, _, dtype, *_ in plan.largest}
    assert dtypes["frozen"] == "bfloat16" and dtypes["params"] == "float32" and "ema" not in dtypes, plan.largest
    moments = [array_name for array_name, *_ in plan.largest if array_name.startswith("opt.")]
    assert moments and all(".lora.adapters.default_0." in array_name for array_name in moments)  # AdamW: adapters


def test_a_step_that_does_not_fit_exits_1():
    result = run_module("train.plan", CONFIGS / "pixart_1024_ms.yaml", "topology=v5e-4", "mesh.fsdp=4",
                        "data.batch_size=256", "model.remat=none", "model.attention=xla")
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(r"^  fits +NO", result.stdout, re.M)
    assert "refused by the compiler" in result.stdout and hbm(result.stdout, "total") > 16


@pytest.mark.parametrize("args, message", [
    (["topology=v3-8"], "is not GENERATION:AxB"),
    ([], "name the slice: topology="),
    (["topology=v5e-4", "mesh.fsdp=3"], "mesh.fsdp=3 does not divide the 4 devices of v5e:2x2"),
    (["topology=v5e-4", "program=pcm-nope"], "program 'pcm-nope' is not one of"),
    (["topology=v5e:0x4"], "error: a slice has at least one chip along each axis, got '0x4' in 'v5e:0x4'\n"),
])
def test_bad_plans_exit_2_naming_the_problem(args, message):
    result = run_module("train.plan", CONFIGS / "tiny.yaml", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "libtpu" not in result.stderr  # installed: the problem is the config or topology


def tiny_plan(*overrides, topology="v5e:2x2"):
    """The tiny model at 32x32 latents (256 tokens), 16 per chip: activations outweigh the weights (at 64x64 the
    compiles take over twice as long and show the same)."""
    entry = PROGRAMS["pretrain"]
    cfg = entry.load_config(CONFIGS / "tiny.yaml", ["workdir=unused", "data.batch_size=64", *overrides])
    return plan_train_step(cfg, entry.program, parse_topology(topology), latent=32)


def test_memory_knobs_show_in_the_plan():
    """Remat per block and bf16 activations cut temporaries; FSDP cuts the per-chip parameters, optimizer state
    and EMA (the arguments) by the number of chips they are sharded over."""
    base, block = tiny_plan(), tiny_plan("model.remat=block")
    bf16 = tiny_plan("model.remat=block", "model.activation_dtype=bfloat16")
    fsdp = tiny_plan("mesh.fsdp=4")
    print(f"tiny at 32x32 latents, 16 per chip, temporaries MiB: remat none {base.temporaries / 2**20:.2f}, block "
          f"{block.temporaries / 2**20:.2f}, block + bf16 activations {bf16.temporaries / 2**20:.2f}; arguments "
          f"fsdp 1 {base.arguments / 2**20:.2f} MiB, fsdp 4 {fsdp.arguments / 2**20:.2f} MiB")
    assert bf16.temporaries < block.temporaries < base.temporaries
    batch_bytes = sum(leaf[-1] for leaf in base.largest if leaf[0].startswith("batch."))
    assert fsdp.arguments < 0.5 * base.arguments + batch_bytes


@pytest.mark.parametrize("tokens", [4096, 4032])
def test_splash_attention_compiles_for_tpu_without_the_score_matrix(tokens):
    """Self-attention at 1024 px (2 x 4096 tokens x 16 heads x 72, bf16; 4032: a 576x1792 bucket, padded to whole
    blocks) on one v5e chip: XLA materialises the (tokens x tokens) scores per head, splash attention does not."""
    mesh = sharding.make_mesh(devices=parse_topology("v5e:1x1").devices())
    q = jax.ShapeDtypeStruct((2, tokens, 16, 72), jnp.bfloat16, sharding=sharding.batch_sharding(mesh))
    temporaries = {}
    with jax.set_mesh(mesh):
        for kernel in ("xla", "auto"):
            grad = jax.grad(lambda q, k, v: attention(q, k, v, kernel=kernel).astype(jnp.float32).sum(), (0, 1, 2))
            compiled = jax.jit(grad).lower(q, q, q).compile()
            temporaries[kernel] = compiled.memory_analysis().temp_size_in_bytes / GIB
    print(f"attention fwd+bwd temporaries: XLA {temporaries['xla']:.3f} GiB, splash {temporaries['auto']:.3f} GiB")
    assert temporaries["xla"] > 1.0 and temporaries["xla"] > 5 * temporaries["auto"]


def test_the_sampling_loop_plans_for_a_slice():
    """PixArtPipeline's jitted loop (2 DPM steps with CFG, VAE decode) for 8 images over a v5e-4's chips."""
    from pixart_jax.models.vae import VAEConfig
    from pixart_jax.planning.pipeline import plan_pipeline

    plan = plan_pipeline("tiny", parse_topology("v5e-4"), images=8, steps=2, dtype="float32",
                         vae_config=VAEConfig(block_out_channels=(16, 16, 16, 16), norm_num_groups=8))
    assert plan.fits and plan.mesh_shape == {"data": 4, "fsdp": 1} and 0 < plan.total < 0.1 * GIB
    assert plan.largest[0][0].startswith(("transformer.", "vae."))


def test_topologies_by_name():
    assert parse_topology("v5e-8").name == "v5e:2x4" and parse_topology("v4-8").name == "v4:2x2x1"
    assert parse_topology("v5p-8").chips == 4 and parse_topology("v6e:2x4").chips == 8
    assert [d.device_kind for d in parse_topology("v4-8").devices()] == ["TPU v4"] * 4  # megacore: one per chip
    with pytest.raises(TopologyError, match="v5e slices have 2 dimensions"):
        parse_topology("v5e:2x2x1")
