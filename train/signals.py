"""What a training program does first, before its imports (seconds) and its model build: from then until the
training loop takes the signals over (pixart_jax/training/loop.py's Preemption, which saves a checkpoint first), and
again once the loop is done, SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) ends the program at once with
exit code 75 and one line, as a stop after saving does: re-running resumes from the newest checkpoint. Standard
library only, so that it is in place before jax is imported."""
import os
import signal

EXIT_PREEMPTED = 75  # pixart_jax.training.command.EXIT_PREEMPTED (EX_TEMPFAIL: a scheduler re-queues the run)


def _exit(signum, frame):
    name = signal.Signals(signum).name
    # os.write, not print: the signal may have interrupted a write to stderr (a reentrant print raises)
    os.write(2, f"{name} outside the training loop: exiting without saving (re-running resumes from the newest "
                f"checkpoint)\n".encode())
    os._exit(EXIT_PREEMPTED)


def exit_on_stop_signals(module_name):
    """Installs the handler when `module_name` (the program module's __name__) is "__main__": run as a program,
    not imported."""
    if module_name == "__main__":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit)
