"""Held-out loss is computed inside the fit, where the fit runs (the Ray Train workers:
sharded and all-reduced, checked with the streamed fit in tests/test_lm_pool_stream.py),
and comes back as a number: the trial never loads the model to evaluate it. The
within-fit curve (every eval_steps optimiser steps) is logged once to the chain's MLflow
run. A DeepSpeed worker loads and builds only what its fit uses. Real fits of the tiny
preset, a real SQLite MLflow store."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.core.loop import chain_generators, run_chain
from collapse_ray.core.chain import ChainConfig
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


def test_the_untrained_model_is_evaluated_where_and_as_fits_are(tmp_path, monkeypatch):
    """A value-grid cell with no rows (n_real = value_synthetic = 0) gets its held-out
    loss from the fit's own code (backends.evaluate: the fit's workers, precision and
    loss; here the in-process backend), not from the trial loading the model in fp32;
    and it is kept under the fit's key, so a second cell that needs it reads it."""
    from collapse_ray.tasks import SFTTask

    task = SFTTask(**LOCAL).with_workdir(tmp_path)
    real = task.real_data(60, [chain_generators(0)[0]])
    untrained = task.fit({"text": np.empty((1, 0), dtype=object)}, real.context)
    assert untrained.figures["setup_seconds"] > 0, "figures from the fit's worker"
    assert untrained.figures["optimizer_steps"] == 1 and untrained.figures["train_tokens"] == 0
    loaded, tokenizer, device = backends.load_for_inference(untrained.model_dir, untrained.tokenizer_dir)
    assert untrained.figures["test_loss"] == pytest.approx(token_loss(loaded, list(real.test), tokenizer.pad_token_id),
                                                           rel=1e-6)

    def no_loading(*args, **kwargs):
        raise AssertionError("the trial loaded the model to evaluate it")

    monkeypatch.setattr(backends, "load_for_inference", no_loading)
    assert task.evaluate(untrained, real.test)["test_loss"][0] == untrained.figures["test_loss"]
    again = task.fit({"text": np.empty((1, 0), dtype=object)}, real.context)
    assert again.figures["eval_seconds"] == untrained.figures["eval_seconds"], "stored, not evaluated twice"


def test_As_held_out_loss_is_the_mean_of_its_batches_token_means(tmp_path):
    """eval_loss batch_mean, (A)'s HF Trainer figure: batches of eval_batch_size rows in
    datasets' shuffle(seed=0) order, the last partial one dropped (dataloader_drop_last),
    each batch's token mean weighted by its rows; not the token-weighted mean."""
    from collapse_ray.text.training import eval_batches, loss_sums

    task = PretrainingTask(**{**LOCAL, "eval_loss": "batch_mean", "eval_batch_size": 3, "epochs": 3,
                              "learning_rate": 3e-3}).with_workdir(tmp_path)
    real = task.real_data(64, [chain_generators(0)[0]])
    fitted = task.fit(real.train, real.context)
    loaded, tokenizer, device = backends.load_for_inference(fitted.model_dir, fitted.tokenizer_dir)
    batches = eval_batches(len(real.test), 3)
    assert [len(b) for b in batches] == [3] * 6 and len(set(np.concatenate(batches))) == 18, "20 rows: 2 dropped"
    assert not np.array_equal(np.concatenate(batches), np.arange(18)), "in the seeded order"
    means = [np.divide(*loss_sums(loaded, [real.test[i] for i in b], tokenizer.pad_token_id)) for b in batches]
    assert fitted.figures["test_loss"] == pytest.approx(np.mean(means), rel=1e-6)
    token_mean = token_loss(loaded, list(real.test), tokenizer.pad_token_id)
    assert abs(fitted.figures["test_loss"] - token_mean) > 1e-3, (fitted.figures["test_loss"], token_mean)


def test_pure_bf16_keeps_weights_and_adam_states_in_bf16_and_fits_save_in_their_precision(tmp_path):
    """precision bf16_pure, as (A)'s models loaded in bf16: weights, gradients and AdamW's
    moments in bf16 (DeepSpeed: no fp32 master copy), where bf16 keeps fp32 masters.
    A bf16 fit is saved in bf16 (27B: 54 GB, not 108), ZeRO-3's shards gathered."""
    import torch

    from transformers import AutoModelForCausalLM

    from collapse_ray.text import training
    from collapse_ray.text.models import build_model, load_tokenizer

    task = PretrainingTask(**LOCAL).with_workdir(tmp_path)
    real = task.real_data(8, [chain_generators(0)[0]])
    tokenizer = load_tokenizer(real.context.tokenizer_dir)
    batch = training.collate(list(real.test[:2]), tokenizer.pad_token_id)
    if not torch.distributed.is_initialized():
        backends._init_single_process_group("cpu")  # what fit_local does for DeepSpeed
    for engine, precision, stage in (("torch", "bf16_pure", 1), ("deepspeed", "bf16_pure", 1), ("deepspeed", "bf16", 1),
                                     ("deepspeed", "bf16", 3)):
        out = tmp_path / f"{engine}-{precision}-{stage}"
        settings = tiny_fit_settings(real.context.tokenizer_dir, out, engine=engine, zero_stage=stage,
                                     precision=precision)
        model = build_model("tiny", tokenizer, 0)
        if precision == "bf16_pure":
            model = model.to(torch.bfloat16)  # as train_worker does
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        run = training._Engine(settings, model, optimizer, scheduler, 1, "cpu")
        run.step_on(batch)
        inner = run.ds.optimizer.optimizer if engine == "deepspeed" else optimizer  # DeepSpeed's ZeRO wraps AdamW
        states = {v.dtype for state in inner.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim}
        masters = {p.dtype for group in inner.param_groups for p in group["params"]}  # what AdamW updates
        weights = {p.dtype for p in run.model.parameters()}
        expected = torch.bfloat16 if precision == "bf16_pure" else torch.float32
        assert weights == {torch.bfloat16}, (engine, precision, weights)
        if stage < 3:  # ZeRO-3's AdamW sees flat partitions only
            assert states == {expected} and masters == {expected}, (engine, precision, states, masters)
        # saved in the training precision (ZeRO-3: gathered into rank 0's CPU memory), loadable, the trained weights
        run.save(str(out), 0, {"test_loss": 1.0}, {})
        saved = AutoModelForCausalLM.from_pretrained(out)
        assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}, (engine, precision, stage)
        if stage < 3:
            for (name, a), b in zip(run.model.named_parameters(), saved.parameters()):
                assert torch.equal(a.detach(), b), name
        else:
            assert not torch.equal(saved.lm_head.weight, build_model("tiny", tokenizer, 0).lm_head.weight.bfloat16())


def test_the_curve_is_logged_once_per_iteration_to_the_chain_run(tmp_path, sqlite_uri):
    from collapse_ray.tracking.sink import MlflowChainSink
    from collapse_ray.tracking.store import client_for

    client = client_for(sqlite_uri)
    run_id = client.create_run(client.create_experiment("curve")).info.run_id
    task = PretrainingTask(**LOCAL, eval_steps=2, epochs=1)
    chain = ChainConfig(workflow="replace", n_real=32, n_iterations=2)
    sink = MlflowChainSink(client, run_id)
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
