"""The demo's Phased Consistency Models stage (pixart_jax/training/pcm.py on the demo's teacher).

A PCM trained with M phases samples with M deterministic steps, so each step count gets its own student, as the
released PCM weights do: M = 1, 2, 4, 8 distilled with the teacher's CFG baked in (w = 3.5 in the LCM form: the
teacher rows' CFG 4.5), sampled without CFG; and a "normal-CFG" M = 4 student (teacher without CFG, 10 % null
captions), sampled with the teacher's CFG 4.5. Every student starts from the teacher and trains as long as LCD.
"""
from flax import nnx

from pixart_jax.samplers import PCM
from pixart_jax.training import pcm

PHASES = (1, 2, 4, 8)
# (name, workdir and model key, overrides of pcm.*, sampling guidance): the students of this stage
STUDENTS = tuple((f"pcm_{m}", (f"pcm.phases={m}", "pcm.guidance=augmented"), 1.0) for m in PHASES) + (
    ("pcm_4_cfg", ("pcm.phases=4", "pcm.guidance=none"), None),)
# the images whose change with the step count `step_change` measures, per method family
STEP_SERIES = {"lcm": tuple(f"lcm_{k}" for k in PHASES), "pcm": tuple(f"pcm_{m}" for m in PHASES)}


def methods(prediction_type, guidance):
    """Rows (name, model key, sampler, steps, guidance) of the PCM students for the demo's grid and scores."""
    sampler = PCM(prediction_type=prediction_type)
    return tuple((name, name, sampler, int(name.split("_")[1]), guidance if scale is None else scale)
                 for name, _, scale in STUDENTS)


def distill_students(examples, teacher_dir, workdir, overrides, guidance):
    """{model key: the EMA target of each PCM student}, distilled from the teacher saved in `teacher_dir` under
    WORKDIR/<name>. `overrides(workdir)` gives the run's shared dotted overrides (optimiser, steps, data)."""
    w = guidance - 1  # the Imagen scale of the teacher's rows in the LCM form
    students = {}
    for name, options, _ in STUDENTS:
        cfg = pcm.load_config(None, [*overrides(f"{workdir}/{name}"), f"model.init_from={teacher_dir}",
                                     "model.caption_dropout=0.0", f"pcm.guidance_min={w}", f"pcm.guidance_max={w}",
                                     *options])
        result = pcm.distill(cfg, examples)
        students[name] = nnx.merge(result.graphdef, result.state["target"], result.state["buffers"])
    return students
