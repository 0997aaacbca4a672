"""The README's fit table: the largest per-chip batch of XL/2 training (pretraining, LCD) that fits v5e-8, v5p-8
and v4-8, with remat per block or none and the parameters replicated (fsdp 1) or sharded over every chip, from
ahead-of-time TPU compiles of the real train steps (pixart_jax/planning/training.py; needs libtpu).

Per-chip HBM is linear in the per-chip batch b (fixed: parameters, optimizer, EMA; per image: activations), so each
(program, resolution, remat) is compiled on a v5p slice (95 GiB: nothing is refused) at two batch sizes with the
parameters replicated (the per-image slope) and at one with them sharded over 4 and 8 chips (the fixed part of
each layout); total(b) = fixed + b * per_image is solved for each chip's capacity, and `--confirm` compiles the
predicted largest batch on the real slices, then walks down or up until b fits and b + 1 does not (the compiler's
plan is close to, not exactly, linear: it keeps more in flight when there is room).

    python bench/fit_table.py --measure results.jsonl     # the compiles (minutes each on 2 cores); resumable
    python bench/fit_table.py --confirm results.jsonl     # find the boundaries by compiling on the real slices
    python bench/fit_table.py --table results.jsonl       # print the table
"""
import argparse
import itertools
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_table  # noqa: E402
from pixart_jax.planning.topologies import GIB, parse_topology  # noqa: E402
from pixart_jax.planning.training import plan_train_step  # noqa: E402
from pixart_jax.training.registry import PROGRAMS  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
SETUPS = {  # (program, resolution) -> (config file, overrides)
    ("pretrain", 1024): ("pixart_1024_ms.yaml", []),
    ("lcm", 1024): ("lcm_1024_ms.yaml", []),
    ("pretrain", 512): ("pixart_512.yaml", []),
    ("lcm", 512): ("lcm_1024_ms.yaml", ["model.preset=PixArt-XL-2-512x512"]),
    ("pretrain", 256): ("pixart_256.yaml", []),
    ("lcm", 256): ("lcm_1024_ms.yaml", ["model.preset=PixArt-XL-2-256x256"]),
}
SLICES = ("v5e-8", "v5p-8", "v4-8")
REMAT = ("block", "none")
FSDP = ("1", "all")                    # parameters replicated, or sharded over every chip of the slice
FIT_SLICES = {1: "v5p-8", 4: "v5p-8", 8: "v5p:2x2x2"}  # fsdp -> a slice with room for every measured batch
BATCHES = (1, 4)                       # per-chip batches compiled for the fit


def chips(slice_name):
    return parse_topology(slice_name).chips


def fsdp_size(fsdp, n_chips):
    return 1 if fsdp == "1" else n_chips


def compile_one(program, resolution, remat, fsdp, per_chip, slice_name):
    """One ahead-of-time compile: a dict of the plan's numbers."""
    config, extra = SETUPS[(program, resolution)]
    topology = parse_topology(slice_name)
    overrides = [*extra, f"model.remat={remat}", f"mesh.fsdp={fsdp}", "mesh.data=-1",
                 f"data.batch_size={per_chip * topology.chips}"]
    entry = PROGRAMS[program]
    plan = plan_train_step(entry.load_config(CONFIGS / config, overrides), entry.program, topology)
    return dict(program=program, resolution=resolution, remat=remat, fsdp=fsdp, per_chip=per_chip,
                slice=slice_name, total=plan.total, temporaries=plan.temporaries, arguments=plan.arguments,
                fits=plan.fits, refused=plan.refused, compile_seconds=round(plan.compile_seconds, 1))


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def fit_compiles():
    """(program, resolution, remat, fsdp mesh size, per-chip batch, fit slice) in the order they are compiled: the
    per-image slope from two batches with replicated parameters, then one batch for each sharded layout (FSDP
    changes the fixed part, not the activations per image)."""
    for (program, resolution), remat in itertools.product(SETUPS, REMAT):
        yield from ((program, resolution, remat, 1, b, FIT_SLICES[1]) for b in BATCHES)
        for fsdp in sorted({fsdp_size("all", chips(s)) for s in SLICES}):
            yield program, resolution, remat, fsdp, BATCHES[0], FIT_SLICES[fsdp]


def measure(path):
    done = {(r["program"], r["resolution"], r["remat"], r["fsdp"], r["per_chip"], r["slice"]) for r in load(path)}
    for key in fit_compiles():
        if key not in done:
            append(path, compile_one(*key))


def predictions(rows):
    """{(program, resolution, remat, fsdp mode, slice): predicted largest per-chip batch} from the fitted lines."""
    points = {}
    for r in rows:
        if r["slice"] in FIT_SLICES.values() and r["refused"] is None:
            points.setdefault((r["program"], r["resolution"], r["remat"], r["fsdp"]), {})[r["per_chip"]] = r["total"]
    out = {}
    for (program, resolution), remat, fsdp_mode, slice_name in itertools.product(SETUPS, REMAT, FSDP, SLICES):
        line = points.get((program, resolution, remat, 1), {})
        own = points.get((program, resolution, remat, fsdp_size(fsdp_mode, chips(slice_name))), {})
        if len(line) < 2 or not own:
            continue
        (b1, t1), (b2, t2) = sorted(line.items())[:2]
        per_image = (t2 - t1) / (b2 - b1)
        b0, t0 = min(own.items())
        capacity = parse_topology(slice_name).chip.hbm_gib * GIB
        out[(program, resolution, remat, fsdp_mode, slice_name)] = max(0, int((capacity - (t0 - b0 * per_image))
                                                                              // per_image))
    return out


def boundary(rows, program, resolution, remat, fsdp, slice_name):
    """The largest per-chip batch measured to fit on the slice whose next batch was measured not to (None if not
    yet known): the compiler's plan is not exactly linear in the batch, so only compiles on the slice decide."""
    fits = {r["per_chip"]: r["fits"] for r in rows if (r["program"], r["resolution"], r["remat"], r["fsdp"],
                                                        r["slice"]) == (program, resolution, remat, fsdp, slice_name)}
    known = [b for b, ok in fits.items() if ok and fits.get(b + 1) is False]
    return max(known) if known else (0 if fits.get(1) is False else None)


def confirm(path, cells=None):
    """Walks each cell (or the given (program, resolution, remat, fsdp mode, slice) cells) from its predicted
    largest batch on the real slice: down while it does not fit, up while the next one does."""
    rows = load(path)
    for cell, b in predictions(rows).items():
        if cells and cell not in cells:
            continue
        program, resolution, remat, fsdp_mode, slice_name = cell
        fsdp = fsdp_size(fsdp_mode, chips(slice_name))
        while boundary(rows, program, resolution, remat, fsdp, slice_name) is None:
            fits = {r["per_chip"]: r["fits"] for r in rows if (r["program"], r["resolution"], r["remat"], r["fsdp"],
                                                                r["slice"]) == (program, resolution, remat, fsdp,
                                                                                slice_name)}
            b = max(1, b)
            if b in fits:
                b = b - 1 if not fits[b] else b + 1
                continue
            row = compile_one(program, resolution, remat, fsdp, b, slice_name)
            append(path, row)
            rows.append(row)


def table(path):
    rows = load(path)
    predicted = predictions(rows)
    header = ["program", "resolution", "remat"] + [f"{s} fsdp {f}" for s in SLICES for f in FSDP]
    body = []
    for (program, resolution), remat in itertools.product(SETUPS, REMAT):
        cells = []
        for slice_name, fsdp_mode in itertools.product(SLICES, FSDP):
            known = boundary(rows, program, resolution, remat, fsdp_size(fsdp_mode, chips(slice_name)), slice_name)
            guess = predicted.get((program, resolution, remat, fsdp_mode, slice_name))
            cells.append(str(known) if known is not None else "?" if guess is None else f"{guess}*")
        body.append([program, resolution, remat, *cells])
    print_table(header, body)
    print("largest images per chip; * = predicted from the two-point fit on v5p, not confirmed on the slice")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--measure", metavar="JSONL")
    group.add_argument("--confirm", metavar="JSONL")
    group.add_argument("--table", metavar="JSONL")
    parser.add_argument("--only", action="append", metavar="PROGRAM:RESOLUTION:REMAT:FSDP:SLICE",
                        help="with --confirm: just these cells, e.g. pretrain:1024:block:all:v5e-8")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
    elif args.confirm:
        cells = [(p, int(r), m, f, s) for p, r, m, f, s in (c.split(":") for c in args.only or [])]
        confirm(args.confirm, cells)
    else:
        table(args.table)


if __name__ == "__main__":
    main()
