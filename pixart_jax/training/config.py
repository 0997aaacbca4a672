"""Training configuration: typed dataclasses read through OmegaConf structured configs.

`load_config("configs/tiny.yaml", ["workdir=runs/tiny", "steps=8"])` merges the YAML file and the dotted
overrides onto the schema below. Unknown keys, wrong types, missing required values (`workdir`, `steps`,
`checkpoint_every`, `seed`), non-finite numbers and values outside RANGES raise `ConfigError` before anything is
built or compiled.
"""
import dataclasses
import enum
import json
from typing import Dict, List, Optional

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pixart_jax import sharding
from pixart_jax.choices import AttentionKernel, DType, LoRAInit, OptimizerName, RematPolicy
from pixart_jax.models.transformer_config import PRESETS
from pixart_jax.models.vae import LATENT_SCALE
from pixart_jax.samplers import SamplerName
from pixart_jax.samplers.prediction import PredictionType
from pixart_jax.training import ranges
from pixart_jax.weights.keymaps.lora import PIXART_TARGETS
from pixart_jax.weights.lora import unknown_targets
from pixart_jax.weights.transformer import transformer_config


class ConfigError(ValueError):
    """A training config that cannot be used, with the reason."""


class OnMismatch(enum.StrEnum):
    """What a run does with checkpoints in its workdir that it cannot resume: saved with other settings or another
    state structure, or none of them readable."""
    stop = "stop"                # an error naming why; nothing in the workdir is touched
    start_over = "start_over"    # move the previous run to WORKDIR/replaced-N and start at step 0


# Settings that may change when a run resumes: how long it runs, where and on which devices, what it logs and keeps.
# Every other setting changes what a checkpoint holds or how training continues from it.
RESUMABLE = ("workdir", "steps", "checkpoint_every", "on_mismatch", "mesh", "distributed", "logging", "sample",
             "checkpoint", "model.init_from", "model.remat")

# The allowed values of the numeric settings whose range is plain (ranges.py's interval notation; a program's
# section, "lcm.", "pcm.", "controlnet.", "dreambooth.", applies where the config has it). Every float setting
# must be finite.
RANGES = {
    "steps": "[1, inf)", "checkpoint_every": "[1, inf)", "seed": f"[0, {2 ** 32 - 1}]",
    "model.caption_dropout": "[0, 1]",
    "optimizer.lr": "[0, inf)", "optimizer.weight_decay": "[0, inf)", "optimizer.eps": "[0, inf)",
    "optimizer.b1": "[0, 1)", "optimizer.b2": "[0, 1)", "optimizer.b3": "[0, 1)", "optimizer.grad_clip": "(0, inf)",
    "optimizer.clip_threshold": "(0, inf)",
    "optimizer.warmup_steps": "[0, inf)", "optimizer.grad_accum_steps": "[1, inf)", "optimizer.ema_rate": "[0, 1]",
    "mesh.data": "[-1, inf)", "mesh.fsdp": "[1, inf)",
    "data.batch_size": "[1, inf)", "data.synthetic_examples": "[1, inf)", "data.latent_scale": "(0, inf)",
    "data.real_prompt_ratio": "[0, 1]",
    "logging.log_every": "[1, inf)",
    "sample.every": "[0, inf)", "sample.steps": "[1, inf)", "sample.guidance_scale": "[0, inf)",
    "sample.num_images": "[1, inf)",
    "checkpoint.max_to_keep": "[1, inf)", "checkpoint.preemption_check_every": "[1, inf)",
    "distributed.num_processes": "[1, inf)", "distributed.process_id": "[0, inf)",
    "lcm.guidance": "[0, inf)", "lcm.huber_c": "(0, inf)", "lcm.target_decay": "[0, 1]",
    "pcm.guidance_min": "[0, inf)", "pcm.guidance_max": "[0, inf)", "pcm.null_caption_prob": "[0, 1]",
    "pcm.target_decay": "[0, 1]", "pcm.huber_c": "(0, inf)", "pcm.adversarial_weight": "[0, inf)",
    "pcm.discriminator.lr": "[0, inf)", "pcm.discriminator.b1": "[0, 1)", "pcm.discriminator.b2": "[0, 1)",
    "pcm.discriminator.eps": "[0, inf)", "pcm.discriminator.weight_decay": "[0, inf)",
    "pcm.discriminator.grad_clip": "(0, inf)",
    "controlnet.copies": "[1, inf)",
    "lora.rank": "[1, inf)", "lora.alpha": "(0, inf)", "lora.dropout": "[0, 1)",
    "dreambooth.num_class_images": "[1, inf)", "dreambooth.prior_loss_weight": "[0, inf)",
    "dreambooth.class_steps": "[1, inf)", "dreambooth.class_guidance": "[0, inf)",
}

# Config sections renamed since: the old name -> what a config that still has it is told.
RENAMED_SECTIONS = {"lcd": "the `lcd:` section is now `lcm:` (LCM distillation: python -m train.lcm); rename it"}


@dataclasses.dataclass
class ModelConfig:
    preset: str = "tiny"                    # a pixart_jax.models.transformer_config.PRESETS name
    init_from: Optional[str] = None         # a converted checkpoint to fine-tune from (any load_transformer layout)
    compute_dtype: DType = DType.float32    # matmul dtype; parameters stay fp32
    remat: RematPolicy = RematPolicy.none   # what the backward pass recomputes: none | block | dots
    activation_dtype: DType = DType.float32  # the residual stream between blocks (what remat=block keeps)
    attention: AttentionKernel = AttentionKernel.auto   # self-attention: auto = XLA on CPU, cuDNN on GPU, splash on TPU
    caption_dropout: float = 0.1            # probability of replacing a caption by y_embedding (mask kept)
    prediction_type: PredictionType = PredictionType.epsilon   # what the model regresses (PixArt: epsilon)


@dataclasses.dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 2e-5                        # before the optional sqrt scaling
    sqrt_lr_scaling: bool = True            # lr *= sqrt(global batch * grad_accum_steps / 256)
    weight_decay: float = 0.03
    eps: float = 1e-10                      # AdamW
    b1: float = 0.9
    b2: float = 0.999
    b3: float = 0.9999                      # CAME: the instability's decay
    came_eps: List[float] = dataclasses.field(default_factory=lambda: [1e-30, 1e-16])  # CAME: added to g², instability
    clip_threshold: float = 1.0             # CAME: the largest RMS of the normalised update
    grad_clip: float = 0.01                 # max global L2 norm of the (accumulated) gradient
    warmup_steps: int = 1000                # linear warmup from 0, counted in optimizer steps
    grad_accum_steps: int = 1
    ema_rate: float = 0.9999


@dataclasses.dataclass
class MeshConfig:
    data: int = -1                          # -1: every device not used by fsdp
    fsdp: int = 1
    # logical parameter axis -> mesh axis (or null = replicated); the logical names are declared on each parameter
    # where it is made (pixart_jax/models/transformer.py): layers, kernel_in, kernel_out, table
    rules: Dict[str, Optional[str]] = dataclasses.field(default_factory=lambda: {
        "layers": None, "kernel_in": "fsdp", "kernel_out": None, "table": None})


@dataclasses.dataclass
class DataConfig:
    source: str = "synthetic"               # a records directory, or "synthetic" (pixart_jax/training/synthetic.py)
    batch_size: int = 8                     # global batch per micro-step, over all hosts
    synthetic_examples: int = 16
    synthetic_buckets: List[str] = dataclasses.field(default_factory=lambda: ["1.0"])
    latent_scale: float = LATENT_SCALE      # x0 = latent_scale * posterior sample (SD VAE's scaling factor)
    # the probability that an example trains on its real caption rather than its long one (PixArt-Σ: 0.5);
    # below 1 the features need both (train.extract_features with the index's `sharegpt4v` captions)
    real_prompt_ratio: float = 1.0


@dataclasses.dataclass
class LoggingConfig:
    log_every: int = 1                      # TensorBoard scalars; metrics.jsonl gets every step regardless
    progress: bool = True                   # tqdm bar on process 0


@dataclasses.dataclass
class SampleConfig:
    every: int = 0                          # optimizer steps between sample grids; 0 = never
    sampler: SamplerName = SamplerName.dpm
    steps: int = 14
    guidance_scale: float = 4.5
    num_images: int = 4                     # taken from the first batch's captions
    vae: Optional[str] = None               # diffusers VAE directory; None shows latent channels 0-2


@dataclasses.dataclass
class CheckpointConfig:
    max_to_keep: int = 3
    async_save: bool = True
    # several processes agree on a SIGTERM at a step boundary every this many steps (each check waits for the step)
    preemption_check_every: int = 1


@dataclasses.dataclass
class DistributedConfig:
    coordinator: Optional[str] = None       # "host:port"; set (with num_processes/process_id) for several hosts
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False                      # jax.distributed.initialize() from the cluster environment


@dataclasses.dataclass
class LoRAConfig:
    """LoRA fine-tuning of `model.init_from` (PEFT's LoraConfig): only the adapters train."""
    rank: int = 4
    alpha: float = 4.0                      # scale alpha / rank (alpha / sqrt(rank) with use_rslora)
    # diffusers module names, matched as PEFT matches target_modules; default: the PixArt repo's LoRA scripts' list
    targets: List[str] = dataclasses.field(default_factory=lambda: list(PIXART_TARGETS))
    init: LoRAInit = LoRAInit.kaiming       # how A starts (B starts at zero): PEFT's init_lora_weights
    use_rslora: bool = False
    dropout: float = 0.0                    # PEFT's lora_dropout on the adapters' inputs, while training


@dataclasses.dataclass
class TrainConfig:
    workdir: str = MISSING
    steps: int = MISSING                    # total optimizer steps
    checkpoint_every: int = MISSING         # optimizer steps between checkpoints (the last step always saves)
    seed: int = MISSING
    on_mismatch: OnMismatch = OnMismatch.stop   # checkpoints in workdir this run cannot resume: stop or start_over
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    lora: Optional[LoRAConfig] = None      # a `lora:` section: LoRA fine-tuning instead of training every weight


def check(cfg, problems=(), what="training"):
    """`cfg` if it is usable, else a ConfigError listing its problems: the caller's (`problems`, from the checks of
    the program `what` names), the settings outside RANGES and those no range expresses."""
    problems = [*problems, *ranges.problems(_flat(to_dict(cfg)), RANGES)]
    if cfg.model.preset not in PRESETS:
        problems.append(f"model.preset {cfg.model.preset!r} is not one of {sorted(PRESETS)}")
    if cfg.mesh.data == 0:
        problems.append("mesh.data must be -1 (every device mesh.fsdp leaves) or at least 1")
    if len(cfg.optimizer.came_eps) != 2 or min(cfg.optimizer.came_eps) < 0:
        problems.append(f"optimizer.came_eps must be two numbers >= 0 (added to g² and to the instability), got "
                        f"{list(cfg.optimizer.came_eps)}")
    unknown = sorted(set(cfg.mesh.rules.values()) - {None, "data", "fsdp"})
    if unknown:
        problems.append(f"mesh.rules map onto unknown mesh axes {unknown} (mesh axes: data, fsdp)")
    if problems:
        raise ConfigError(f"invalid {what} config: " + "; ".join(problems))
    return cfg


def check_pretraining(cfg):
    """`check(cfg)` with the problems of its `lora:` section, if it has one (pre-training's validation)."""
    if cfg.lora is None:
        return check(cfg)
    problems = lora_problems(cfg)
    if cfg.sample.every:
        problems.append("sample.every must be 0 with lora: sample grids are drawn from the EMA, which a LoRA run "
                        "does not keep")
    return check(cfg, problems)


def lora_problems(cfg):
    """What keeps the `lora:` section of `cfg` from running (RANGES checks its numbers)."""
    problems = []
    if not cfg.model.init_from:
        problems.append("lora needs model.init_from: the base model the adapters fine-tune")
    depth = model_depth(cfg.model)
    unknown = unknown_targets(cfg.lora.targets, depth) if depth is not None else []
    if unknown:
        problems.append(f"unknown lora.targets {unknown}: no module of diffusers' PixArtTransformer2DModel is named "
                        f"so (such as {', '.join(PIXART_TARGETS)})")
    return problems


def check_program(cfg, problems, what, lora=False):
    """`check(cfg)` with a training program's own `problems` (and a set sample.every: sample grids are drawn by
    pre-training only); `what` names the program ("LCD", "ControlNet"); `lora`: whether it trains LoRA adapters
    when the config has a `lora:` section (else that section is refused)."""
    if cfg.sample.every:
        problems = [*problems, f"sample.every must be 0: sample grids are not drawn during {what} training"]
    if cfg.lora is not None:
        problems = [*problems, *(lora_problems(cfg) if lora else [
            f"a lora: section is not supported by {what} training (only by train.pretrain, train.dreambooth, "
            "train.lcm, train.pcm)"])]
        if lora and cfg.lora.dropout:  # the consistency steps give the adapters no dropout keys
            problems.append(f"lora.dropout {cfg.lora.dropout} is not supported by {what} training (only by "
                            "train.pretrain and train.dreambooth): set it to 0")
    return check(cfg, problems, what)


def model_depth(model_cfg):
    """The depth of the transformer `model_cfg` describes: its preset's, or its `init_from` checkpoint's (None if
    that cannot be read: loading it says why)."""
    try:
        return (transformer_config(model_cfg.init_from) if model_cfg.init_from else PRESETS[model_cfg.preset]).depth
    except (KeyError, ValueError):
        return None


def make_mesh(mesh_cfg):
    """The config's ("data", "fsdp") mesh over every device; a ConfigError when its sizes do not fit them."""
    try:
        return sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_config(path=None, overrides=(), schema=None, validate=None):
    """The `schema` config (default TrainConfig) from a YAML file (optional) and dotted `key=value` overrides,
    validated by `validate` (default `check_pretraining`)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    try:
        merged = OmegaConf.structured(schema or TrainConfig)
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        renamed = RENAMED_SECTIONS.get(str(getattr(e, "full_key", None)).split(".")[0])
        if renamed:
            raise ConfigError(f"{renamed}{f' (in {path})' if path else ''}") from None
        raise ConfigError(f"invalid training config{f' {path}' if path else ''}: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    return (validate or check_pretraining)(cfg)


def to_yaml(cfg):
    """The resolved config as YAML text (saved with every run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg):
    """The resolved config as plain JSON-able containers."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def resume_differences(saved: dict, current: dict) -> list[str]:
    """'KEY: SAVED in the checkpoint, NOW now' for each setting of `current` (a `to_dict` config) that differs from
    the `saved` config of a checkpoint and is not RESUMABLE. Settings the saved config lacks (added since) are not
    compared."""
    before, now = _flat(saved), _flat(json.loads(json.dumps(current)))
    # A LoRA run's checkpoints hold only the adapters: every resume takes the base from model.init_from again.
    settings = RESUMABLE if current.get("lora") is None else tuple(r for r in RESUMABLE if r != "model.init_from")
    resumable = lambda key: any(key == r or key.startswith(r + ".") for r in settings)  # noqa: E731
    return [f"{key}: {before[key]!r} in the checkpoint, {value!r} now" for key, value in now.items()
            if key in before and before[key] != value and not resumable(key)]
