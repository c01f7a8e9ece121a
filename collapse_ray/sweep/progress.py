"""What the sweep's driver prints while it runs: its start line, one line per finished
trial (with an ETA), and one per checkpoint of long chains."""

from __future__ import annotations

import time

from ray.tune import Callback


def say(message: str) -> None:
    """Progress line on the driver's stdout (looked up at call time: Tune pickles callbacks)."""
    print(message, flush=True)


class ProgressCallback(Callback):
    """One line per finished trial (with an ETA), and per checkpoint of long chains."""

    def __init__(self, n_trials: int, sweep_started: float | None = None, at_most: bool = False):
        self.n_trials = n_trials
        self.at_most = at_most  # an adaptive search runs some of the n_trials: no ETA, "of at most"
        self.done = 0
        self.start = time.perf_counter()  # the trials' start, for the ETA
        # "elapsed" counts from the sweep's start (Ray's start-up too), as the closing line does
        self.sweep_started = self.start if sweep_started is None else sweep_started

    def on_trial_result(self, iteration, trials, trial, result, **info):
        total = trial.config["job"]["n_iterations"]
        if result.get("iteration", total) < total:
            say(f"  {trial.config['job']['key']}: iteration {result['iteration']}/{total}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        now = time.perf_counter()
        eta = (now - self.start) / self.done * (self.n_trials - self.done)
        # a trial a resumed or grown sweep had finished before reran nothing: say so, not "done"
        what = "already finished, kept" if (trial.last_result or {}).get("skipped") else "done"
        if self.at_most:
            say(f"[{self.done} of at most {self.n_trials}] {trial.config['job']['key']} {what}; elapsed "
                f"{now - self.sweep_started:.0f}s")
            return
        say(f"[{self.done}/{self.n_trials}] {trial.config['job']['key']} {what}; elapsed "
            f"{now - self.sweep_started:.0f}s, eta {eta:.0f}s")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        say(f"[{self.done}/{self.n_trials}] {trial.config['job']['key']} FAILED: {trial.error_file}")
