"""Held-out loss is computed inside the fit, where the fit runs (the Ray Train workers:
sharded and all-reduced), and comes back as a number: the trial never loads the model
to evaluate it. The within-fit curve (every eval_steps optimiser steps) is logged once
to the chain's MLflow run. Real fits of the tiny preset, a real SQLite MLflow store."""

from __future__ import annotations

import os

import numpy as np
import pytest

from collapse_ray.loop import chain_generators, run_chain
from collapse_ray.spec import ChainConfig
from collapse_ray.tasks import PretrainingTask
from collapse_ray.text import backends
from collapse_ray.text.training import token_loss

LOCAL = {"backend": "local", "sampler": "local", "engine": "torch", "max_length": 64, "vocab_size": 300,
         "n_test": 20, "micro_batch_size": 8}


def _loss_in_this_process(model, test) -> float:
    loaded, tokenizer, device = backends.load_for_inference(model.model_dir, model.tokenizer_dir)
    return token_loss(loaded, list(test), tokenizer.pad_token_id, device=device)


def test_the_fit_returns_the_held_out_loss_and_its_curve(tmp_path, monkeypatch):
    task = PretrainingTask(**LOCAL, eval_steps=3).with_workdir(tmp_path)
    real = task.real_data(64, [chain_generators(0)[0]])
    fitted = task.fit(real.train, real.context)
    curve = fitted.figures["eval_curve"]
    assert [step for step, _ in curve] == [3, 6, 8], "every 3 of the 8 optimiser steps, and the last"
    assert curve[-1][1] == fitted.figures["test_loss"]
    assert curve[0][1] > curve[-1][1], "the held-out loss falls within the fit"
    assert fitted.figures["test_loss"] == pytest.approx(_loss_in_this_process(fitted, real.test), rel=1e-5)

    def no_loading(*args, **kwargs):
        raise AssertionError("evaluate loaded the model")

    monkeypatch.setattr(backends, "load_for_inference", no_loading)
    metrics = task.evaluate(fitted, real.test)
    assert metrics["test_loss"][0] == fitted.figures["test_loss"]
    assert task.iteration_series(fitted) == {"fit_test_loss": [(s, v) for s, v in curve]}
    assert PretrainingTask(**LOCAL).iteration_series(fitted) == {}, "no curve without eval_steps"


def test_the_curve_is_logged_once_per_iteration_to_the_chain_run(tmp_path, sqlite_uri):
    from collapse_ray import tracking

    client = tracking.client_for(sqlite_uri)
    run_id = client.create_run(client.create_experiment("curve")).info.run_id
    task = PretrainingTask(**LOCAL, eval_steps=2, epochs=1)
    chain = ChainConfig(workflow="replace", n_real=32, n_iterations=2)
    sink = tracking.MlflowChainSink(client, run_id)
    run_chain(task, chain, [0], checkpoint_dir=tmp_path / "chain", sink=sink)
    for t in (1, 2):
        history = client.get_metric_history(run_id, f"fit_test_loss/iteration_{t:03d}")
        assert [m.step for m in history] == [2, 4], t
    sink.log_series(1, {"fit_test_loss": [(2, 9.0)]})  # a recomputed iteration: already stored
    assert len(client.get_metric_history(run_id, "fit_test_loss/iteration_001")) == 2


@pytest.mark.ray
@pytest.mark.slow  # a TorchTrainer's start-up: ~30 s on 2 cores
def test_ray_train_workers_all_reduce_their_shards_of_the_held_out_loss(tmp_path, local_ray):
    task = PretrainingTask(**{**LOCAL, "backend": "ray_train", "num_workers": 2, "cpus_per_worker": 0.9,
                              "n_test": 21}).with_workdir(tmp_path)  # 21: the shards differ in size
    real = task.real_data(48, [chain_generators(1)[0]])
    assert backends.HEALTH_CHECK_ENV not in os.environ
    fitted = task.fit(real.train, real.context)
    assert backends.HEALTH_CHECK_ENV not in os.environ  # the fit's poll interval was for its controller only
    assert fitted.figures["test_loss"] == pytest.approx(_loss_in_this_process(fitted, real.test), rel=1e-5)
    assert np.isfinite(fitted.figures["eval_seconds"])
