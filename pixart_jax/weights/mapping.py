"""Key maps as data: a table of rules between our parameter paths and a source checkpoint's keys.

A `Rule(ours, source, kind)` names one of our modules (dotted path), the source module(s) it comes from and how
the tensors change on the way:

  kind "linear"        torch Linear weight (out, in) + bias  ->  kernel (in, out) + bias
  kind "linear_nobias" the same without a bias
  kind "conv"          torch Conv weight (O, I, kh, kw) + bias  ->  kernel (kh, kw, I, O) + bias
  kind "param"         one tensor, copied as it is (tables, norm scales, buffers)

Several sources are concatenated along the output axis (fused q/k/v or k/v projections; split again on export).
A source containing "{i}" is a stack of layers: layer i goes to index i of our parameter's leading axis.
"""
import dataclasses

import numpy as np

from pixart_jax.weights.errors import WeightsError


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: str
    source: tuple[str, ...] | str
    kind: str = "linear"

    @property
    def sources(self):
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


# kind -> [(our leaf suffix, source leaf suffix, tensor tag)]
LEAVES = {
    "linear": [("kernel", "weight", "matrix"), ("bias", "bias", "vector")],
    "linear_nobias": [("kernel", "weight", "matrix")],
    "conv": [("kernel", "weight", "conv"), ("bias", "bias", "vector")],
    "param": [("", "", "vector")],
}


def _to_ours(tag, parts):
    if tag == "matrix":
        return np.concatenate(parts, axis=0).T
    if tag == "conv":
        return np.concatenate(parts, axis=0).transpose(2, 3, 1, 0)
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _to_source(tag, value, n):
    if tag == "matrix":
        value = value.T
    elif tag == "conv":
        value = value.transpose(3, 2, 0, 1)
    return np.split(value, n, axis=0) if n > 1 else [value]


def _source_shapes(tag, our_shape, n):
    """The shape each of the n source tensors must have for our parameter of `our_shape`."""
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=our_shape, strides=(0,) * len(our_shape))
    return [part.shape for part in _to_source(tag, dummy, n)]


def _join(*names):
    return ".".join(n for n in names if n)


def leaf_rules(rules):
    """Expands module rules to (our leaf path, [source key templates], tag)."""
    for rule in rules:
        for ours_leaf, src_leaf, tag in LEAVES[rule.kind]:
            yield _join(rule.ours, ours_leaf), [_join(s, src_leaf) for s in rule.sources], tag


def import_weights(rules, source, expected, *, where="checkpoint", ignore=(), optional=()):
    """Maps a source state dict to our flat parameters.

    source: {key: array}; expected: {our dotted path: shape}. Every expected path must be filled (except those
    in `optional`), every source key used (except those in `ignore`), every shape must fit; otherwise a
    WeightsError names the key and both shapes. Returns {our path: np.ndarray}.
    """
    out, used, problems = {}, set(), []
    for ours, templates, tag in leaf_rules(rules):
        if ours not in expected:
            continue
        shape = tuple(expected[ours])
        stacked = "{i}" in templates[0]
        layers = range(shape[0]) if stacked else [None]
        per_layer = shape[1:] if stacked else shape
        want = _source_shapes(tag, per_layer, len(templates))
        values = []
        for i in layers:
            keys = [t.format(i=i) for t in templates]
            absent = [k for k in keys if k not in source]
            if absent:
                if ours not in optional:
                    problems.append(f"missing key {absent[0]!r} (expected shape {want[keys.index(absent[0])]}) "
                                    f"for parameter {ours}")
                break
            arrays = [source[k] for k in keys]  # each looked up once: a lazy source reads it from disk here
            got = [tuple(a.shape) for a in arrays]
            bad = [(k, g, w) for k, g, w in zip(keys, got, want) if g != w]
            used.update(keys)
            if bad:
                k, g, w = bad[0]
                problems.append(f"shape mismatch for key {k!r}: {where} has {g}, model expects {w} "
                                f"(parameter {ours} of shape {shape})")
                break
            values.append(_to_ours(tag, [np.asarray(a) for a in arrays]))
        else:
            out[ours] = np.stack(values) if stacked else values[0]
    unexpected = sorted(set(source) - used - set(ignore))
    problems += [f"unexpected key {k!r} of shape {tuple(source[k].shape)} (not part of the model's layout)"
                 for k in unexpected]
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsError(f"{where} does not fit the model:\n  " + "\n  ".join(problems[:20]) + more)
    return out


def export_weights(rules, params):
    """Inverse of import_weights: {our path: array} -> {source key: np.ndarray} (paths absent are skipped)."""
    out = {}
    for ours, templates, tag in leaf_rules(rules):
        if ours not in params:
            continue
        value = np.asarray(params[ours])
        stacked = "{i}" in templates[0]
        for i, layer in enumerate(value if stacked else [value]):
            for t, part in zip(templates, _to_source(tag, layer, len(templates))):
                out[t.format(i=i)] = np.ascontiguousarray(part)
    return out
