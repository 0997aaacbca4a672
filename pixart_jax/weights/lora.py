"""LoRA adapters on a PixArtTransformer by the names PyTorch users write: targets suffix-matched on diffusers' module
paths as PEFT matches them, and adapter files keyed by diffusers' or the original repo's module paths, mapped onto
our modules through the transformer key maps (keymaps/pixart.py). A diffusers module fused into ours (to_q / to_k /
to_v of self-attention into `qkv`, to_k / to_v of cross-attention into `kv`) becomes a part of the adapter on that
slice of our outputs; an original-layout adapter on `qkv` is one part over all of it.

A PixArtControlNet is adapted the same way by the names of the PyTorch ControlNet wrapper (keymaps/controlnet.py:
`base_model.<diffusers path>` for its frozen base, `controlnet.{k}.copied_block.<diffusers block path>` for the
copies, `controlnet.0.before_proj` and `controlnet.{k}.after_proj`), the names PEFT gives it."""
import collections
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixart_jax.choices import LoRAInit
from pixart_jax.models import lora
from pixart_jax.models.controlnet import PixArtControlNet
from pixart_jax.models.transformer import PixArtTransformer
from pixart_jax.weights.controlnet import save_controlnet
from pixart_jax.weights.errors import WeightsError
from pixart_jax.weights.keymaps import controlnet as controlnet_keys
from pixart_jax.weights.keymaps import lora as lora_keys
from pixart_jax.weights.keymaps import pixart as keys
from pixart_jax.weights.lora_files import read_adapter, write_peft
from pixart_jax.weights.transformer import save_diffusers


@dataclasses.dataclass(frozen=True)
class Site:
    """Where a PyTorch module's adapter goes: our module path, its layer in the stacked blocks (None outside them)
    and which of the `parts` equal output slices of our module it is."""
    ours: str
    layer: int | None
    part: int
    parts: int


def _our_module(model, ours):
    return functools.reduce(lambda m, name: getattr(m, name, None), ours.split("."), model)


def _key_maps(model):
    """(rules naming `model`'s modules in diffusers' names, rules in the original layout's): a ControlNet's (its
    PyTorch wrapper's names) or a transformer's."""
    if isinstance(model, PixArtControlNet):
        return controlnet_keys.DIFFUSERS_CONTROLNET, controlnet_keys.ORIGINAL_CONTROLNET
    return keys.DIFFUSERS, keys.ORIGINAL


def _model_kind(model):
    return "the PyTorch ControlNet-Transformer" if isinstance(model, PixArtControlNet) else \
        "diffusers' PixArtTransformer2DModel"


def _every_site(rules, depth):
    """{PyTorch module path: Site} of every linear and conv a key-map table names (any config)."""
    sites = {}
    for rule in rules:
        if rule.kind not in ("linear", "conv"):
            continue
        for j, source in enumerate(rule.sources):
            for i in range(depth) if "{i}" in source else [None]:
                sites[source.format(i=i)] = Site(rule.ours, i, j, len(rule.sources))
    return sites


def _has(model, site):
    module = _our_module(model, site.ours)
    return module is not None and (site.layer is None or site.layer < module.kernel.shape[0])


def module_sites(model, rules=None):
    """{PyTorch module path: Site} of the modules `model` has (the micro-condition embedders only in MS models, a
    ControlNet's copies only up to its count); `rules`: a key-map table, by default the model's diffusers names."""
    rules = _key_maps(model)[0] if rules is None else rules
    return {path: site for path, site in _every_site(rules, model.cfg.depth).items() if _has(model, site)}


def _matches(path, target):
    return path == target or path.endswith("." + target)


def _named(targets, paths):
    """The `paths` that `targets` name: a list of names, or one regular expression matched against whole paths."""
    if isinstance(targets, str):
        return [p for p in paths if re.fullmatch(targets, p)]
    return [p for p in paths if any(_matches(p, t) for t in targets)]


def unknown_targets(targets, depth, rules=keys.DIFFUSERS) -> list[str]:
    """The names of `targets` (as target_modules reads them) that no module of a diffusers PixArt of `depth` blocks
    (of the models `rules` name) matches; a regular expression matching nothing is itself unknown."""
    every = _every_site(rules, depth)
    if isinstance(targets, str):
        return [] if _named(targets, every) else [targets]
    return [t for t in targets if t not in lora_keys.ABSENT_TARGETS and not _named([t], every)]


def target_modules(model, targets) -> list[str]:
    """The diffusers module paths of `model` that `targets` name, as PEFT reads target_modules: a list of names
    each matching a path equal to it or ending in "." + it, or one string matched as a regular expression against
    whole paths. A name that no diffusers PixArt module has is an error naming it."""
    rules = _key_maps(model)[0]
    unknown = unknown_targets(targets, model.cfg.depth, rules)
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}: no module of {_model_kind(model)} is named so (targets "
                         f"are diffusers module names such as {', '.join(lora_keys.PIXART_TARGETS)})")
    present = module_sites(model)
    return [p for p in _named(targets, _every_site(rules, model.cfg.depth)) if p in present]


def _layer_arrays(module, site, entries, where):
    """(A, B, alpha) of one part from {layer: (path, A, B, alpha)} in our layout, the layers stacked (zeros for
    layers without an adapter: they add exactly nothing); shapes, ranks and alphas checked."""
    kernel = module.kernel
    stacked = site.layer is not None
    in_shape, width = tuple(kernel.shape[int(stacked):-1]), kernel.shape[-1] // site.parts
    for path, a, b, _ in entries.values():
        if a.shape[:-1] != in_shape or b.shape != (a.shape[-1], width):
            raise WeightsError(f"{where}: the LoRA of {path} does not fit the module: A {a.shape} and B {b.shape} "
                               f"(our layout) for a module from {in_shape} to {width}")
    kinds = {(a.shape[-1], alpha) for _, a, _, alpha in entries.values()}
    if len(kinds) > 1:
        raise WeightsError(f"{where}: the LoRAs of {sorted(p for p, *_ in entries.values())[:4]}... differ in "
                           f"(rank, alpha) across layers {sorted(kinds)}; one per module is supported")
    rank, alpha = kinds.pop()
    if not stacked:
        _, a, b, _ = entries[None]
        return a, b, alpha
    # jnp, not np: add_lora also runs under nnx.eval_shape (a training plan), where the drawn A are tracers
    a_zero, b_zero = jnp.zeros((*in_shape, rank), jnp.float32), jnp.zeros((rank, width), jnp.float32)
    layers = range(kernel.shape[0])
    return (jnp.stack([entries[i][1] if i in entries else a_zero for i in layers]),
            jnp.stack([entries[i][2] if i in entries else b_zero for i in layers]), alpha)


def attach(model, name, entries, rslora=False, where="adapter", rules=None, dropout=0.0):
    """Adds adapter `name` from {PyTorch module path: (A, B, alpha)} in our layout (A (*in, r), B (r, width)),
    every part checked before the model changes; `dropout`: its lora_dropout while training. Returns `model`."""
    sites = module_sites(model, rules)
    groups = collections.defaultdict(dict)
    for path, (a, b, alpha) in entries.items():
        site = sites[path]
        groups[(site.ours, site.part, site.parts)][site.layer] = (path, jnp.asarray(a), jnp.asarray(b), alpha)
    parts = []
    for (ours, part, count), layers in groups.items():
        module = _our_module(model, ours)
        site = Site(ours, next(iter(layers)), part, count)
        a, b, alpha = _layer_arrays(module, site, layers, where)
        start = part * (module.kernel.shape[-1] // count)
        axes = module.kernel.get_metadata("axes", None)
        parts.append((module, lora.LoRAPart(a, b, alpha, start, rslora, axes, dropout)))
    for module, part in parts:
        lora.add_part(module, name, part)
    return model


def _activate(model, name, weight):
    """Adds adapter `name` to the active ones with `weight` (the others keep theirs)."""
    active = {**lora.active_adapters(model), name: weight}
    return lora.set_adapters(model, list(active), list(active.values()))


def new_adapter_name(names, name=None):
    """`name`, or the first free "default_N" (diffusers' default names), refused if one of `names` (the adapters
    held) already is it. Shared with the PyTorch path."""
    if name is None:
        name = next(f"default_{n}" for n in range(len(names) + 1) if f"default_{n}" not in names)
    if name in names:
        raise ValueError(f"the model already holds an adapter named {name!r}")
    return name


def add_lora(transformer, targets=lora_keys.PIXART_TARGETS, rank=4, alpha=8.0, *, use_rslora=False,
             init=LoRAInit.kaiming, adapter_name=None, seed=0, dropout=0.0):
    """Adds a new adapter (A drawn as PEFT draws it, B zero: the model computes what it did) on the diffusers modules
    `targets` names (PEFT's target_modules: a list of names, or a regular expression), and makes it active with
    weight 1. `dropout`: PEFT's lora_dropout, applied in train steps only (models.lora.set_dropout_keys). Returns
    `transformer`."""
    if not isinstance(rank, (int, np.integer)) or rank <= 0:
        raise ValueError(f"the LoRA rank must be a positive integer, got {rank!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"the LoRA dropout must be in [0, 1), got {dropout!r}")
    name, key = new_adapter_name(lora.adapter_names(transformer), adapter_name), jax.random.key(seed)
    sites, entries = module_sites(transformer), {}
    for n, path in enumerate(target_modules(transformer, targets)):
        kernel = _our_module(transformer, sites[path].ours).kernel
        in_shape = kernel.shape[int(sites[path].layer is not None):-1]
        a = lora.init_a(jax.random.fold_in(key, n), (*in_shape, rank), len(in_shape), init)
        entries[path] = (a, np.zeros((rank, kernel.shape[-1] // sites[path].parts), np.float32), alpha)
    return _activate(attach(transformer, name, entries, use_rslora, dropout=dropout), name, 1.0)


def _to_ours(a, b):
    """PyTorch lora_A (r, in) / conv (r, C, kh, kw) and lora_B (out, r[, 1, 1]) -> A (*in, r), B (r, out)."""
    a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
    return np.asarray(a, np.float32), np.asarray(b.reshape(b.shape[:2]).T, np.float32)


def load_lora(transformer, path, scale=1.0, adapter_name=None):
    """Reads the LoRA adapter at `path` (a PEFT folder, pytorch_lora_weights.safetensors, a kohya / OneTrainer file;
    keys in diffusers' or the original layout), adds it to `transformer` as `adapter_name` (default "default_N")
    and makes it active with weight `scale` beside the active ones. Returns `transformer`."""
    name = new_adapter_name(lora.adapter_names(transformer), adapter_name)
    rules = sum(_key_maps(transformer), [])
    adapter = read_adapter(path, module_sites(transformer, rules))
    entries = {m: (*_to_ours(a, b), alpha) for m, (a, b, alpha) in adapter.modules.items()}
    attach(transformer, name, entries, adapter.rslora, adapter.where, rules)
    return _activate(transformer, name, float(scale))


def _to_torch(a, b):
    """Inverse of _to_ours: A (*in, r), B (r, out) -> PyTorch lora_A, lora_B (conv: (r, C, kh, kw), (out, r, 1, 1))."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1)), np.ascontiguousarray(b.T[:, :, None, None])
    return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)


def _covering(module, site, name):
    """(A, B) in PyTorch's layout of adapter `name` on diffusers module `site`'s slice, or None if no part has it
    (or only the zeros of a layer without an adapter)."""
    width = module.kernel.shape[-1] // site.parts
    lo = site.part * width
    found = []
    for part in module.lora.adapters[name]:
        if part.start <= lo and lo + width <= part.start + part.width:
            a, b = np.asarray(part.a[...]), np.asarray(part.b[...])
            if site.layer is not None:
                a, b = a[site.layer], b[site.layer]
            if a.any() or b.any():
                found.append((*_to_torch(a, b[:, lo - part.start:lo - part.start + width]), part))
    if len(found) > 1:
        raise WeightsError(f"adapter {name!r} has {len(found)} parts on one diffusers module ({site}); a PEFT file "
                           "holds one")
    return found[0] if found else None


def export_adapter(transformer, name):
    """{diffusers module path: (lora_A, lora_B, LoRAPart)} of adapter `name`, in PyTorch's layout."""
    out = {}
    for path, site in module_sites(transformer).items():
        module = _our_module(transformer, site.ours)
        if module.lora is not None and name in module.lora.adapters:
            found = _covering(module, site, name)
            if found:
                out[path] = found
    return out


def _short_targets(paths, leaves):
    """The shortest dotted suffixes that, matched as PEFT matches target_modules, pick exactly `paths` among the
    modules of diffusers' model: the adapted `leaves` and every module holding them ("transformer_blocks.0")."""
    pieces = [leaf.split(".") for leaf in leaves]
    every = {".".join(p[:n]) for p in pieces for n in range(1, len(p) + 1)}
    chosen, wanted = set(), set(paths)
    for path in paths:
        pieces = path.split(".")
        for n in range(1, len(pieces) + 1):
            suffix = ".".join(pieces[-n:])
            if all(p in wanted for p in every if _matches(p, suffix)):
                chosen.add(suffix)
                break
    return sorted(chosen)


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _one_dropout(exported):
    """The lora_dropout of an exported adapter's parts: one PEFT config holds one."""
    dropouts = {part.dropout for *_, part in exported.values()}
    if len(dropouts) > 1:
        raise WeightsError(f"the adapter's modules have different dropouts {sorted(dropouts)}; a PEFT config holds "
                           "one lora_dropout")
    return dropouts.pop()


def peft_config(transformer, exported, base_model_name_or_path=None):
    """adapter_config.json of an exported adapter: the commonest rank and alpha, patterns for the others."""
    ranks = {p: part.rank for p, (*_, part) in exported.items()}
    alphas = {p: part.alpha for p, (*_, part) in exported.items()}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA", "r": int(r), "lora_alpha": _number(alpha),
        "target_modules": _short_targets(list(exported), list(module_sites(transformer))),
        "rank_pattern": {re.escape(p): int(v) for p, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(p): _number(v) for p, v in alphas.items() if v != alpha},
        "use_rslora": any(part.rslora for *_, part in exported.values()), "use_dora": False,
        "lora_dropout": _one_dropout(exported), "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "task_type": None, "base_model_name_or_path": base_model_name_or_path,
    }


def _one_adapter(transformer, adapter_name):
    names = lora.adapter_names(transformer)
    if adapter_name is None and len(names) == 1:
        return names[0]
    if adapter_name not in names:
        raise ValueError(f"name the adapter to save (adapter_name=...): the model holds {names}")
    return adapter_name


def peft_adapter(transformer, adapter_name=None, base_model_name_or_path=None):
    """(state dict {base_model.model.<diffusers path>.lora_A / lora_B.weight: array}, adapter_config dict) of
    adapter `adapter_name` (by default the model's only one) as PEFT holds it on diffusers' PixArtTransformer2DModel."""
    name = _one_adapter(transformer, adapter_name)
    exported = export_adapter(transformer, name)
    if not exported:
        raise WeightsError(f"adapter {name!r} holds nothing but zeros: it has no PEFT form")
    if len({part.rslora for *_, part in exported.values()}) > 1:
        raise WeightsError(f"adapter {name!r} mixes rsLoRA and plain scaling, which one PEFT config cannot say")
    tensors = {}
    for path, (a, b, _) in exported.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
    return tensors, peft_config(transformer, exported, base_model_name_or_path)


def read_peft(cfg, path):
    """The adapter at `path` (any file load_lora reads, in diffusers' or the original module names) in PEFT's form
    for diffusers' PixArtTransformer2DModel of config `cfg`: (state dict, adapter_config dict), as peft_adapter.
    Read onto a weightless (nnx.eval_shape) model of ours, so that the formats, key maps, checks and the split of
    the original layout's fused qkv / kv into diffusers' modules are load_lora's own."""
    model = nnx.eval_shape(lambda: PixArtTransformer(cfg, rngs=nnx.Rngs(0)))
    return peft_adapter(load_lora(model, path))


def save_lora(transformer, directory, adapter_name=None, *, base_model_name_or_path=None, overwrite=False):
    """Writes adapter `adapter_name` (by default the model's only one) as a PEFT folder in diffusers' module names
    (adapter_config.json + adapter_model.safetensors), which peft.PeftModel.from_pretrained loads onto diffusers'
    PixArtTransformer2DModel; atomically, replacing an existing folder only if pixart-jax wrote it or with
    `overwrite`. The adapter's weight in the model (set_adapters, load_lora's scale) is not saved, as in PEFT."""
    tensors, config = peft_adapter(transformer, adapter_name, base_model_name_or_path)
    write_peft(directory, tensors, config, overwrite=overwrite)


def save_merged(transformer, dst, *, overwrite=False, keep=()):
    """Writes `transformer` with its active adapters merged in (at their weights) as a diffusers `transformer/`
    folder (see save_diffusers), a ControlNet as save_controlnet writes it; the model itself is left as it is."""
    save = save_controlnet if isinstance(transformer, PixArtControlNet) else save_diffusers
    save(lora.merge_and_unload(nnx.clone(transformer)), dst, overwrite=overwrite, keep=keep)
