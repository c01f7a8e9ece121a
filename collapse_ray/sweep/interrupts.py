"""SIGINT and SIGTERM while a sweep runs: recorded by the driver, passed on to Tune's own
stop handler, and raised as `Signalled` at the next point the sweep checks, so the sweep
marks itself interrupted (collapse_ray.sweep.run) and `--resume` continues it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; `ray job stop` and cluster schedulers


class SweepInterrupted(Exception):
    """SIGINT or SIGTERM stopped the sweep. `resumable`: its sweep.json was written (and
    now says "interrupted"), so `--resume` continues from the chain checkpoints."""

    def __init__(self, signum: int, sweep_dir: Path, resumable: bool):
        self.signum, self.sweep_dir, self.resumable = signum, sweep_dir, resumable
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class Signalled(BaseException):  # BaseException: Ray's and Tune's `except Exception` let it through
    def __init__(self, signum: int):
        self.signum = signum


class _Interrupts:
    """What the driver's handlers saw. A signal is only recorded (raising inside Ray's
    C code turns into a SystemError there); while Tune runs, it is passed on to Tune's
    own stop handler (its SIGUSR1), which ends the run cleanly. The sweep then raises
    Signalled at the next point it checks."""

    signum: int | None = None
    tune_running = False


_SEEN = _Interrupts()


def _on_interrupt(signum, frame):
    for s in INTERRUPTS:  # a second signal is handled as usual (stops at once)
        signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
    if _SEEN.signum is None:
        _SEEN.signum = signum
    if _SEEN.tune_running:
        stop_tune = signal.getsignal(signal.SIGUSR1)  # set by tune.run for this purpose
        if callable(stop_tune):
            stop_tune(signum, frame)


def raise_if_interrupted() -> None:
    if _SEEN.signum is not None:
        raise Signalled(_SEEN.signum)


def _arm_interrupts() -> None:
    if threading.current_thread() is threading.main_thread() and _SEEN.signum is None:
        for s in INTERRUPTS:
            signal.signal(s, _on_interrupt)


@contextmanager
def ray_starting() -> Iterator[None]:
    """Around ray.init, which installs SIGTERM handlers of its own that exit (sys.exit) at
    once: such an exit while Ray starts is Signalled, and ours are installed again after it."""
    armed = signal.getsignal(signal.SIGTERM) is _on_interrupt
    try:
        yield
    except SystemExit:
        if not armed or signal.getsignal(signal.SIGTERM) is _on_interrupt:
            raise
        raise Signalled(signal.SIGTERM) from None
    if armed:
        _arm_interrupts()


@contextmanager
def tune_running() -> Iterator[None]:
    """While Tune runs, a signal is passed on to its stop handler."""
    raise_if_interrupted()
    _SEEN.tune_running = True
    try:
        yield
    finally:
        _SEEN.tune_running = False
    raise_if_interrupted()


class _QuietWhenInterrupted(logging.Filter):
    """Tune's own messages about an interrupted run ("Tuner.restore(...)") name the wrong
    way to continue: the driver's message names --resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _SEEN.signum is None


@contextmanager
def interrupts_recorded() -> Iterator[None]:
    """SIGINT and SIGTERM are recorded in the driver (see _Interrupts) instead of Tune's
    own SIGINT handling, which ends the run as if it had finished. Only in the main
    thread, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in INTERRUPTS}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    quiet = _QuietWhenInterrupted()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(quiet)
    _SEEN.signum, _SEEN.tune_running = None, False
    try:
        _arm_interrupts()
        yield
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
        tune_logger.removeFilter(quiet)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler
