"""LoRA adapters on the PyTorch path's transformer (diffusers' PixArtTransformer2DModel) through PEFT, with the LoRA
core's functions and meaning (pixart_jax/models/lora.py, weights/lora.py), so the pipelines' shared LoRA methods
(pixart_jax.pipelines.lora) run on either backend.

A file is read by our reader (weights.lora.read_peft: every format load_lora reads, the original layout's fused
qkv / kv split per diffusers module) into a PEFT state dict and LoraConfig, which peft.inject_adapter_in_model and
set_peft_model_state_dict put on the model in place. An adapter's weight is PEFT's scaling times it (diffusers'
set_adapters); the weights are kept on the model as `pixart_lora_weights`."""
import types
import warnings

from pixart_jax.models.lora import FUSED, chosen_adapters
from pixart_jax.models.transformer_config import PixArtConfig
from pixart_jax.torch.loading import to_torch
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.lora import new_adapter_name, read_peft

WEIGHTS = "pixart_lora_weights"


def _peft():
    """peft, imported on use: only LoRA needs it."""
    try:
        import peft
    except ImportError as e:
        raise ImportError(f"LoRA on the PyTorch path needs peft ({e}): pip install 'pixart-jax[torch]'") from None
    return peft


def _named_layers(model):
    """[(path, layer)] of the PEFT LoRA layers of `model` (the modules its adapters were injected into)."""
    layer = _peft().tuners.lora.LoraLayer
    return [(path, m) for path, m in model.named_modules() if isinstance(m, layer)]


def _layers(model):
    return [layer for _, layer in _named_layers(model)]


def adapter_names(model) -> list[str]:
    """The names of the adapters `model` holds, sorted."""
    return sorted(getattr(model, "peft_config", {}))


def active_adapters(model) -> dict[str, float]:
    """{name: weight} of the adapters the forward applies."""
    return dict(getattr(model, WEIGHTS, {}))


def _check_unfused(model, what):
    if any(layer.merged for layer in _layers(model)):
        raise ValueError(FUSED.format(what))


def set_adapters(model, names, weights=None):
    """Makes `names` (a name or a list) the active adapters with `weights` (a number for all, a list, or None: 1.0),
    as pixart_jax.set_adapters; [] turns every adapter off. Returns `model`."""
    active = chosen_adapters(names, weights, adapter_names(model))
    _check_unfused(model, "set_adapters")
    for layer in _layers(model):
        layer.set_adapter(list(active), inference_mode=True)  # names a layer lacks it skips, as PEFT's forward does
        for name, weight in active.items():
            layer.set_scale(name, weight)
    setattr(model, WEIGHTS, active)
    return model


def _inject(model, name, tensors, config, where):
    """Adds adapter `name` of PEFT state dict `tensors` and adapter_config `config` to `model`."""
    peft = _peft()
    with warnings.catch_warnings():
        # several named adapters on one model are the point here: PEFT warns when a second one is injected
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        peft.inject_adapter_in_model(peft.get_peft_config(config), model, adapter_name=name)
    state = {key: to_torch(value, "cpu") for key, value in tensors.items()}
    result = peft.set_peft_model_state_dict(model, state, adapter_name=name)
    if result.unexpected_keys:  # every tensor must have found its module: a mismatch is a bug, not a file error
        raise WeightsError(f"{where}: PEFT put no module where {sorted(result.unexpected_keys)[:5]} go")


def load_lora(model, path, scale=1.0, adapter_name=None):
    """Reads the LoRA adapter at `path` (any file pixart_jax.load_lora reads), adds it to `model` as
    `adapter_name` (default "default_N") and makes it active with weight `scale` beside the active ones. Returns
    `model`."""
    name = new_adapter_name(adapter_names(model), adapter_name)
    _check_unfused(model, "adding adapters")
    tensors, config = read_peft(PixArtConfig.from_diffusers(dict(model.config)), path)
    _inject(model, name, tensors, config, path)
    active = {**active_adapters(model), name: float(scale)}
    return set_adapters(model, list(active), list(active.values()))


def fuse_lora(model):
    """Merges the active adapters, at their weights, into the base weights (PEFT's merge). Returns `model`."""
    for layer in _layers(model):
        if not layer.merged:
            layer.merge()
    return model


def unfuse_lora(model):
    """Takes merged adapters back out of the base weights (PEFT's unmerge). Returns `model`."""
    for layer in _layers(model):
        if layer.merged:
            layer.unmerge()
    return model


def unload_lora(model):
    """Removes every adapter: each LoRA layer is replaced by its base layer (merged adapters taken out first).
    Returns `model`."""
    unfuse_lora(model)
    for path, module in _named_layers(model):
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    for attribute in ("peft_config", WEIGHTS):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return model


# The backend of the pipelines' LoRA methods (pixart_jax.pipelines.lora), as JAX_LORA is the JAX pipelines'.
TORCH_LORA = types.SimpleNamespace(load_lora=load_lora, set_adapters=set_adapters, active_adapters=active_adapters,
                                   fuse_lora=fuse_lora, unfuse_lora=unfuse_lora, unload_lora=unload_lora)
