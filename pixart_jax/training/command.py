"""The command line every training program shares: `python -m train.<program> [CONFIG] [key=value ...]`.

Exit codes: 0 finished; 2 bad config (also an unusable workdir or data source), before anything is built; 3
stopped by an error (NaN/Inf loss or state, checkpoints saved with other settings or that none can be read, the
workdir in use by another run, another process count, a checkpoint that cannot be loaded or written); 75 stopped
by SIGTERM or SIGINT (Ctrl-C) after saving a checkpoint, or at once outside the training loop (train/signals.py)
(EX_TEMPFAIL: a scheduler re-queues it; re-running resumes). Errors are one line on stderr.
"""
import os
import sys

import jax

from pixart_jax.files import FileError
from pixart_jax.training import config as config_lib
from pixart_jax.training.errors import RunError

EXIT_PREEMPTED = 75


def run_program(argv, doc, load_config, run):
    """Parses `argv` (a config path first, unless it is an override), loads it with `load_config(path,
    overrides)`, calls `run(cfg)` (which returns a loop.RunResult) and reports; returns the exit code. `doc` is
    the help text."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(doc.strip())
        return 0
    path, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:
        cfg = load_config(path, overrides)
        result = run(cfg)
    except (config_lib.ConfigError, RunError, FileError) as e:  # weights to load or write: init_from, export
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, config_lib.ConfigError) else 3
    if jax.process_index() == 0:
        print(f"{'stopped' if result.preempted else 'finished'} at step {result.step}; "
              f"metrics in {os.path.join(cfg.workdir, 'metrics.jsonl')}", flush=True)
    return EXIT_PREEMPTED if result.preempted else 0
