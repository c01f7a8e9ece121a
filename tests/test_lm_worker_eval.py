"""Held-out loss is computed inside the fit, where the fit runs (the Ray Train workers:
sharded and all-reduced, checked with the streamed fit in tests/test_lm_pool_stream.py),
and comes back as a number: the trial never loads the model to evaluate it. The
within-fit curve (every eval_steps optimiser steps) is logged once to the chain's MLflow
run. A DeepSpeed worker loads and builds only what its fit uses. Real fits of the tiny
preset, a real SQLite MLflow store."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.loop import chain_generators, run_chain
from collapse_ray.spec import ChainConfig
from collapse_ray.tasks import PretrainingTask
from collapse_ray.text import backends
from collapse_ray.text.training import token_loss

from .helpers import tiny_fit_settings

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
@pytest.mark.slow  # a TorchTrainer's start-up: ~20 s on 2 cores
def test_a_deepspeed_worker_loads_and_builds_only_what_its_fit_uses(tmp_path, local_ray):
    """A Ray Train worker's DeepSpeed fit (the real worker loop) leaves MLflow unimported,
    Muon's kernels uncompiled and, in an empty extensions folder (a new venv's first
    fit), builds no op: none of them serves a fit (collapse_ray/text/lean_deepspeed.py)."""
    import json

    import pyarrow as pa
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.steps import encode

    task = PretrainingTask(**{**LOCAL, "n_test": 8}).with_workdir(tmp_path)
    real = task.real_data(32, [chain_generators(2)[0]])
    texts = [str(t) for t in np.ravel(real.train["text"])]
    examples = encode(load_tokenizer(real.context.tokenizer_dir), texts, 64, False)
    settings = tiny_fit_settings(real.context.tokenizer_dir, tmp_path / "model", micro_batch_size=4,
                                 engine="deepspeed", zero_stage=2)
    extensions, reports = tmp_path / "torch_extensions", tmp_path / "reports"
    extensions.mkdir(), reports.mkdir()

    def loop(config):  # defined here, so Ray ships it by value
        import os
        import sys

        os.environ["TORCH_EXTENSIONS_DIR"] = config["extensions"]  # read by DeepSpeed's op builder
        import ray.train

        from collapse_ray.text import backends as worker_backends

        worker_backends._ray_train_loop(config)
        from deepspeed.comm import comm
        from deepspeed.runtime.zero.muon import original_muon

        facts = {"mlflow": "mlflow" in sys.modules, "shm_op": comm.cdb.shm_comm_op is not None,
                 "muon_compiled": hasattr(original_muon.muon_update, "_torchdynamo_orig_callable")}
        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(config["reports"], f"{rank}.json"), "w") as f:
            json.dump(facts, f)

    table = pa.table({"input_ids": pa.array([np.asarray(x, dtype=np.int32) for x in examples],
                                            type=pa.list_(pa.int32()))})
    TorchTrainer(
        loop,
        train_loop_config={"settings": settings, "n_examples": len(examples), "held_out": None,
                           "extensions": str(extensions), "reports": str(reports)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
        datasets={"train": ray.data.from_arrow(table).repartition(4).materialize()},
        run_config=RunConfig(name="lean-deepspeed", storage_path=str(tmp_path / "ray_train")),
    ).fit()
    facts = [json.loads((reports / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert facts == [{"mlflow": False, "shm_op": False, "muon_compiled": False}] * 2
    assert not list(extensions.iterdir()), "an op was built"
    assert (tmp_path / "model" / "config.json").exists(), "the fit ran and saved its model"
