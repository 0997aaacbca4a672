"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) on the linears and the patch-embedding conv of our models, with
PEFT's conventions: y = base(x) + weight · scale · (x A) B, scale = alpha / r (alpha / √r with rsLoRA), A drawn as
PEFT draws it and B zero, several named adapters per module with per-adapter weights, merge into the base kernel
and back. PEFT's lora_dropout drops the adapter's input (not the base's) during training only: a train step gives
the model dropout keys (set_dropout_keys), a model without them (inference, export) never drops.

An adapted module (a `Dense` or the `PatchEmbed`) holds a `LoRA` in its `lora` attribute. Each named adapter is a
list of `LoRAPart`s, each covering a slice of the module's outputs: one part for a plain linear, or one per PyTorch
module fused into ours (diffusers' to_q / to_k / to_v of self-attention onto our `qkv`, each with its own A and B:
exactly PyTorch's function, and training keeps them apart). Parts of the stacked (scanned) blocks carry the leading
"layers" axis like every block variable, so jax.lax.scan slices them with the block.

Which modules and slices the targets' PyTorch names mean is the weights floor's business (pixart_jax/weights/lora.py,
through the key maps); this module holds, runs, merges and removes adapters.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.choices import LoRAInit, choose

# What changing adapters while they are merged into the kernels is refused with (here and on the PyTorch path).
FUSED = "the model's adapters are fused into its weights: unfuse_lora it before {}"


class LoRAParam(nnx.Variable):
    """An adapter matrix (LoRA A or B): its own Variable type, not an nnx.Param, so an optimizer can train only
    adapters (nnx.state(model, LoRAParam)) and one that trains nnx.Param leaves them alone."""


class LoRADropoutKey(nnx.Variable):
    """A train step's dropout key of one adapted module (one per layer in the stacked blocks, so that scan gives each
    block its own). Set on a model the step builds from its state, never part of a stored state."""


def init_a(key, shape, in_ndim, init=LoRAInit.kaiming):
    """A of `shape` (..., *in, r) float32, drawn as PEFT draws lora_A; fan_in is the product of the last `in_ndim`
    dimensions before the rank (a conv's in-channels × kernel size)."""
    init = choose(LoRAInit, init, "init")
    if init is LoRAInit.gaussian:
        return jax.random.normal(key, shape) / shape[-1]
    bound = 1 / np.sqrt(np.prod(shape[-1 - in_ndim:-1]))  # kaiming-uniform, a=√5: gain √(1/3) · √(3/fan_in)
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


class LoRAPart(nnx.Module):
    """One adapter on outputs [start, start + width) of a module: delta = (u A) B · scale.
    a: (*in, r), b: (r, width), both with a leading layers axis in stacked blocks. `axes`: the logical axes of the
    module's kernel (..., *in, out), from which the adapter's take theirs (the rank axis is not sharded). `dropout`:
    PEFT's lora_dropout, the probability of zeroing each element of the part's input while training."""

    def __init__(self, a, b, alpha, start=0, rslora=False, axes=None, dropout=0.0):
        axes = axes or (None,) * np.ndim(a)
        layers = np.ndim(b) - 2
        self.a = LoRAParam(jnp.asarray(a, jnp.float32), axes=(*axes[:-1], None))
        self.b = LoRAParam(jnp.asarray(b, jnp.float32), axes=(*axes[:layers], None, axes[-1]))
        self.alpha, self.start, self.rslora, self.dropout = float(alpha), int(start), bool(rslora), float(dropout)

    @property
    def rank(self):
        return self.b.shape[-2]

    @property
    def width(self):
        return self.b.shape[-1]

    @property
    def scale(self):
        """PEFT's scaling: alpha / r, or alpha / √r with rsLoRA (Kalajdzievski 2023)."""
        return self.alpha / (np.sqrt(self.rank) if self.rslora else self.rank)

    def delta_kernel(self):
        """scale · A B (..., *in, width) in float32: what this part adds to its slice of the kernel."""
        return jnp.matmul(self.a[...], self.b[...], precision="highest") * self.scale


class LoRA(nnx.Module):
    """The adapters of one module: {name: [LoRAPart]}, the active names with their weights (set_adapters), and
    whether those are merged into the base kernel (then the forward adds nothing more), and a train step's dropout
    key (None: no dropout)."""

    def __init__(self, dtype):
        self.adapters = nnx.Dict()
        self.active = ()   # ((name, weight), ...): static, so changing it retraces a jitted model
        self.fused = False
        self.dtype = dtype
        self.dropout_key = nnx.data(None)

    def parts(self):
        """Every part of every adapter held, active or not."""
        return [part for name in self.adapters for part in self.adapters[name]]

    def dropped(self, u, part, index):
        """u as `part` sees it: with PEFT's lora_dropout (each element zeroed with probability p, the rest scaled
        by 1 / (1 - p)) drawn from the dropout key folded with `index` (each part its own mask, as each PyTorch
        module draws its own); u itself without a key or dropout."""
        if not part.dropout or self.dropout_key is None:
            return u
        keep = jax.random.bernoulli(jax.random.fold_in(self.dropout_key[...], index), 1 - part.dropout, u.shape)
        return jnp.where(keep, u / (1 - part.dropout), 0).astype(u.dtype)

    def __call__(self, u, y):
        """y (..., out) plus every active, unmerged adapter's delta of the module's input u (..., *in)."""
        if self.fused:
            return y
        u, index = u.astype(self.dtype), 0
        for name, weight in self.active:
            for part in self.adapters[name] if name in self.adapters else ():
                a, b = part.a[...].astype(self.dtype), part.b[...].astype(self.dtype)
                h = jnp.tensordot(self.dropped(u, part, index), a, a.ndim - 1)        # (..., r)
                index += 1
                delta = (h @ b) * (weight * part.scale)                              # (..., width)
                y = y.at[..., part.start:part.start + part.width].add(delta.astype(y.dtype))
        return y

    def kernel_change(self, kernel):
        """Σ weight · scale · A B over the active adapters, placed in their slices of `kernel` (..., *in, out)."""
        change = jnp.zeros_like(kernel)
        for name, weight in self.active:
            for part in self.adapters[name] if name in self.adapters else ():
                change = change.at[..., part.start:part.start + part.width].add(weight * part.delta_kernel())
        return change


def adapted_modules(model):
    """[(path, module)] of the modules of `model` that hold adapters."""
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(getattr(m, "lora", None), LoRA)]


def set_dropout_keys(model, key):
    """Gives every adapted module of `model` whose adapters have dropout its own key drawn from `key` (split per
    layer in the stacked blocks), so that its next forwards drop the adapters' inputs. For the model a train step
    builds from its state: inference and export never set keys, so dropout is off there. Returns `model`."""
    for n, (_, module) in enumerate(adapted_modules(model)):
        parts = module.lora.parts()
        if any(part.dropout for part in parts):
            layers = parts[0].b.shape[:-2]
            module.lora.dropout_key = LoRADropoutKey(jax.random.split(jax.random.fold_in(key, n), layers))
    return model


def add_part(module, name, part: LoRAPart):
    """Adds `part` to adapter `name` of `module` (a Dense or PatchEmbed), which starts holding adapters if it had
    none; refused while the module's adapters are merged (its kernel would no longer be the base's)."""
    if module.lora is None:
        module.lora = LoRA(module.dtype)
    if module.lora.fused:
        raise ValueError(FUSED.format("adding adapters"))
    parts = list(module.lora.adapters[name]) if name in module.lora.adapters else []
    module.lora.adapters[name] = nnx.List([*parts, part])


def adapter_names(model) -> list[str]:
    """The names of the adapters `model` holds, sorted."""
    return sorted({name for _, m in adapted_modules(model) for name in m.lora.adapters})


def refuse_adapters(model, what):
    """A ValueError when `model` holds adapters: `what` (a save in a base-model layout) would drop or mangle them."""
    names = adapter_names(model)
    if names:
        raise ValueError(f"{what}: the model holds LoRA adapters {names}, which this layout has no place for. "
                         "save_lora writes the adapters, save_merged the model with them merged in; unload_lora "
                         "(or merge_and_unload) first to write a plain model")


def active_adapters(model) -> dict[str, float]:
    """{name: weight} of the adapters the forward applies."""
    modules = adapted_modules(model)
    return dict(modules[0][1].lora.active) if modules else {}


def _weights(names, weights):
    if weights is None or isinstance(weights, (int, float)):
        return [1.0 if weights is None else float(weights)] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"set_adapters: {len(names)} adapter names but {len(weights)} weights")
    return [float(w) for w in weights]


def chosen_adapters(names, weights, held) -> dict[str, float]:
    """{name: weight} of a set_adapters call: `names` a name or a list, each one of `held`; `weights` a number for
    all, a list, or None (1.0). Shared with the PyTorch path (pixart_jax/torch/lora.py), which means the same."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = sorted(set(names) - set(held))
    if unknown:
        raise ValueError(f"unknown adapter names {unknown}; the model holds {sorted(held)}")
    return dict(zip(names, _weights(names, weights)))


def set_adapters(model, names, weights=None):
    """Makes `names` (a name or a list) the active adapters, each with its weight (a number for all, a list, or
    None: 1.0), as PEFT's / diffusers' set_adapters; [] turns every adapter off. Returns `model`."""
    active = tuple(chosen_adapters(names, weights, adapter_names(model)).items())
    for _, module in adapted_modules(model):
        if module.lora.fused:
            raise ValueError(FUSED.format("set_adapters"))
        module.lora.active = active
    return model


def _shift_kernels(model, sign, fused):
    for _, module in adapted_modules(model):
        if module.lora.fused != fused:
            kernel = module.kernel[...]
            module.kernel.set_value(kernel + sign * module.lora.kernel_change(kernel))
            module.lora.fused = fused
    return model


def fuse_lora(model):
    """Merges the active adapters, with their weights, into the base kernels (a forward then costs what the base
    model's does); adapters stay held, for unfuse_lora. Returns `model`."""
    return _shift_kernels(model, 1, True)


def unfuse_lora(model):
    """Takes merged adapters back out of the kernels (exact up to float32 rounding of kernel ± change). Returns
    `model`."""
    return _shift_kernels(model, -1, False)


def unload_lora(model):
    """Removes every adapter; the kernels are the base model's again (merged ones are taken out first). Returns
    `model`."""
    unfuse_lora(model)
    for _, module in adapted_modules(model):
        module.lora = None
    return model


def merge_and_unload(model):
    """Merges the active adapters into the kernels for good and removes every adapter (PEFT's merge_and_unload):
    a plain model computing what the adapted one did. Returns `model`."""
    fuse_lora(model)
    for _, module in adapted_modules(model):
        module.lora = None
    return model
