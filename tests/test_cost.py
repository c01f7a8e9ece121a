"""`collapse-ray validate SPEC --cost` (collapse_ray/sweep/cost.py): the FLOP and token arithmetic
on a small spec computed by hand, the model-state memory against DeepSpeed's own
estimators, why Gemma-2-27B takes ZeRO-3, the profile's provenance and its bad-input
lines, and the shape of what the command prints."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from collapse_ray import cli
from collapse_ray.sweep import cost, cost_estimate, cost_profile, cost_rows
from collapse_ray.sweep.spec import load_spec, parse_spec
from collapse_ray.text import memory

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2026, 12, 6, 16, 0, tzinfo=datetime.timezone.utc)


def profile_file(folder: Path, **changes) -> Path:
    """A measured CPU profile with round numbers, so the times below are hand-computable."""
    data = {
        "format": cost_profile.PROFILE_FORMAT, "name": "test-cpu", "device": "cpu", "measured": True,
        "measured_at": "2026-12-06T13:00:00Z", "machine": {"cpu": "test CPU", "cores": 2, "load_average": [1.0, 2.0]},
        "sweep_start_s": 10.0, "toy_trial_s": 0.5, "lm_trial_s": {"local": 4.0, "ray": 6.0},
        "fit": {"local": {"models": {"tiny": {"train_tokens_per_s": 1000.0, "eval_tokens_per_s": 4000.0,
                                              "start_s": 1.0, "parameters": 149248}}},
                "ray_train": {"models": {"tiny": {"train_tokens_per_s": 2000.0, "eval_tokens_per_s": 8000.0,
                                                  "start_s": 20.0, "parameters": 149248}}}},
        "sample": {"local": {"models": {"tiny": {"batch": 64, "step_s": 0.01, "start_s": 0.5}}},
                   "ray_data": {"models": {"tiny": {"batch": 64, "step_s": 0.01, "start_s": 8.0}}}},
        **changes,
    }
    path = folder / "profile.json"
    path.write_text(json.dumps(data))
    return path


SMALL = {
    "name": "small_lm",
    "task": {"name": "pretraining", "model": "tiny", "vocab_size": 512, "max_length": 64, "epochs": 2,
             "micro_batch_size": 8, "num_workers": 2, "n_test": 20},
    "chain": {"n_real": 100, "n_iterations": 3},
    "seeds": 1,
    "grid": {"chain.workflow": ["replace", "accumulate", "accumulate_subsample"]},
    "run": {"cpus_per_trial": 0.01, "max_concurrent_trials": 1},
}


def test_tokens_flops_and_time_of_a_small_spec_by_hand(tmp_path):
    """Training rows per iteration by workflow (replace 100, 100, 100; accumulate 100,
    200, 300; accumulate_subsample 100 each), the micro-batches 2 workers of 8 take,
    2 epochs, 6 N FLOPs a token; samples after iterations 1 and 2 only, 2 N a token;
    iteration 1's fit made once for the three workflows; times from the profile's rates."""
    spec = parse_spec(SMALL)
    profile = cost_profile.load_profile(profile_file(tmp_path))
    n = 149_248  # GPT-2 of d 64, 2 layers, 512 tokens, 256 positions: V d + P d + L (12 d^2 + 13 d) + 2 d
    assert memory.architecture("tiny", 512).parameters == 64 * 512 + 64 * 256 + 2 * (12 * 64**2 + 13 * 64) + 2 * 64 == n
    by_workflow = {p.chain.workflow: p.chain for p in spec.points}
    assert cost_rows.training_rows(by_workflow["replace"], 1.0) == [100, 100, 100]
    assert cost_rows.training_rows(by_workflow["accumulate"], 1.0) == [100, 200, 300]
    assert cost_rows.training_rows(by_workflow["accumulate_subsample"], 1.0) == [100, 100, 100]

    rows = cost_rows.row_stats(spec.points[0].task, 100)
    assert 20 < rows.tokens <= 64 and rows.kept == 1.0 and rows.basis.startswith("measured on")
    estimate = cost_estimate.estimate_sweep(spec, profile)
    trials = {t.key.split("__")[1]: t for t in estimate.trials}
    # each worker takes (rows // 2) // 8 micro-batches of 8 an epoch: 96 rows of 100, 96 of 200... 288 of 300
    used = {"replace": [96, 96, 96], "accumulate": [96, 192, 288], "accumulate_subsample": [96, 96, 96]}
    for workflow, trial in trials.items():
        tokens = [u * 2 * rows.tokens for u in used[workflow]]
        assert [f.tokens for f in trial.fits] == pytest.approx(tokens)
        evaluations = [1 + 0 for _ in tokens]  # eval_steps 0: once, at the end
        eval_tokens = [e * 20 * rows.tokens for e in evaluations]
        assert [f.flops for f in trial.fits] == pytest.approx([6 * n * t + 2 * n * e for t, e in zip(tokens, eval_tokens)])
        assert [f.seconds for f in trial.fits] == pytest.approx([20 + t / 2000 + e / 8000 for t, e in zip(tokens, eval_tokens)])
        assert [s.samples for s in trial.samplings] == [100, 100]
        assert [s.tokens for s in trial.samplings] == pytest.approx([100 * (rows.tokens - 1)] * 2)
        assert [s.flops for s in trial.samplings] == pytest.approx([2 * n * 100 * (rows.tokens - 1)] * 2)
        # 2 batches of 64 on 2 actors: one round of the expected longest sample's steps
        assert [s.seconds for s in trial.samplings] == pytest.approx([8.0 + rows.batch_longest * 0.01] * 2)
    # one trial at a time: the first makes iteration 1's fit, the other two find it made
    assert sum(t.shared_fits for t in estimate.trials) == 2
    assert estimate.wall_s == pytest.approx(10 + sum(t.seconds for t in estimate.trials))
    first = estimate.trials[0]
    assert first.seconds == pytest.approx(6 + sum(f.seconds for f in first.fits) + sum(s.seconds for s in first.samplings))


@pytest.mark.parametrize("workflow, knobs", [
    ("replace", {}), ("accumulate", {}), ("accumulate", {"n_fresh_real": 20}), ("accumulate_subsample", {"n_train": 150}),
    ("fresh_data", {}), ("iterative_retraining", {"synthetic_ratio": 0.5}),
    ("real_fraction", {"n_train": 120, "real_fraction": 0.3})])
def test_training_rows_are_what_the_workflows_block_selection_selects(workflow, knobs):
    """The sizes cost_rows.training_rows derives without drawing rows are the lengths of the
    selections the chain loop makes (MixingPolicy.select_blocks) on a pool of those sizes."""
    import numpy as np

    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.core.workflows import REAL, SYNTHETIC, PoolBlocks

    chain = ChainConfig(workflow=workflow, n_real=100, n_synthetic=80, n_iterations=4, **knobs).resolved()
    policy, iteration, source, rows, selected = chain.policy(), [0], [REAL], [100], []
    for t in range(1, 5):
        blocks = PoolBlocks(np.asarray(iteration), np.asarray(source, dtype=np.int8), np.asarray(rows))
        selected.append(len(policy.select_blocks(blocks, t, [np.random.default_rng(t)])[0]))
        iteration, source, rows = iteration + [t, t], source + [SYNTHETIC, REAL], rows + [80, policy.n_fresh_real]
    assert cost_rows.training_rows(chain, 1.0) == selected


def test_a_value_grid_cell_trains_on_n_real_plus_its_synthetic_rows_and_pools_are_costed_once(tmp_path):
    spec = parse_spec({
        "name": "small_grid",
        "task": {"name": "sft", "model": "tiny", "vocab_size": 512, "max_length": 128, "epochs": 1, "n_test": 20,
                 "backend": "local", "sampler": "local", "engine": "torch", "micro_batch_size": 10,
                 "value_pool_size": 150, "value_pool_real": 100, "n_value_pools": 2},
        "chain": {"n_iterations": 1}, "seeds": 1,
        "grid": {"chain.n_real": [0, 50], "task.value_synthetic": [0, 100], "task.value_pool": [0, 1]},
        "run": {"cpus_per_trial": 1, "max_concurrent_trials": 1}})
    estimate = cost_estimate.estimate_sweep(spec, cost_profile.load_profile(profile_file(tmp_path)))
    rows = {(t.key.split("__")[2], t.key.split("__")[3], t.key.split("__")[4]): t.fits[0].rows for t in estimate.trials}
    assert rows[("n_real50", "value_synthetic100", "value_pool1")] == 150
    assert rows[("n_real0", "value_synthetic0", "value_pool0")] == 0
    assert all(not t.samplings for t in estimate.trials)
    assert [name for name, _, _ in estimate.pools] == ["pool 0", "pool 1"]  # one per pool, not per cell
    _, pool_fit, pool_sampling = estimate.pools[0]
    assert pool_fit.rows == 100 and pool_sampling.samples == 150  # drawn until 150 are accepted, taken as 150
    # cells without synthetic rows fit what the other pool's column fits: one at a time, made once
    assert sum(t.shared_fits for t in estimate.trials) == 2


def test_model_states_per_gpu_are_deepspeeds_own_estimates():
    """ZeRO-2 and ZeRO-3 in mixed bf16 (what DeepSpeed's estimators assume), without
    offload, for the three Gemma-2 sizes and the tiny preset; the largest layer as
    DeepSpeed's model_to_params finds it in a real (tiny) model."""
    import torch
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage3 import model_to_params as zero3_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from transformers import AutoModelForCausalLM

    from collapse_ray.text.models import model_config

    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_config(model_config("tiny", 512, 0))
    arch = memory.architecture("tiny", 512)
    assert zero3_params(tiny) == (arch.parameters, arch.largest_layer)
    for model in ("tiny", *memory.HUB_ARCHITECTURES):
        arch = memory.architecture(model, 512 if model == "tiny" else 0)
        for gpus in (1, 8, 16):
            zero2 = memory.estimate(arch, "bf16", 2, gpus, 1, 128, "bf16")
            assert zero2.model_states == pytest.approx(estimate_zero2_model_states_mem_needs(
                arch.parameters, num_gpus_per_node=gpus, cpu_offload=False)[1], abs=1)
            zero3 = memory.estimate(arch, "bf16", 3, gpus, 1, 128, "bf16")
            assert zero3.model_states == pytest.approx(estimate_zero3_model_states_mem_needs(
                arch.parameters, arch.largest_layer, num_gpus_per_node=gpus, cpu_offload=False,
                cpu_offload_params=False)[1], abs=1)


def test_the_27b_fit_shows_why_it_takes_zero3():
    """sft_helpsteer2's Gemma-2-27B case: ZeRO-2 over 8 GPUs of 80 GiB is over (its bf16
    weights stay whole on every GPU), ZeRO-3 over 16 fits; the lines give the numbers."""
    spec = load_spec(ROOT / "sweeps/sft_helpsteer2.yaml")
    task = next(p.task for p in spec.points if p.task.model == "google/gemma-2-27b")
    lines = cost.memory_lines(task)
    text = "\n".join(lines)
    assert "ZeRO-3 over 16 workers" in lines[0] and ": fits" in lines[0]
    ladder = next(line for line in lines if line.strip().startswith("why ZeRO-3 over 16"))
    figures = {part.split(":")[0].strip(): part for part in ladder.split(": ", 1)[1].split("; ")}
    assert "OVER" in figures["ZeRO-2 x 8"] and "fits" in figures["ZeRO-3 x 16"]
    need = {k: float(v.split(": ")[1].split(" GiB")[0]) for k, v in figures.items()}
    assert need["ZeRO-2 x 8"] > 80 >= need["ZeRO-3 x 16"]
    assert need["ZeRO-2 x 16"] > 80 - 4  # ZeRO-2 even over 16 leaves almost nothing (the 50.7 GiB of weights stay)
    assert "weights alone take 50.7 GiB on every GPU" in text


def test_the_profile_says_which_it_is_and_how_old(tmp_path):
    measured = cost_profile.load_profile(profile_file(tmp_path))
    line = measured.provenance(NOW)
    assert line.startswith("profile test-cpu (") and "profile.json" in line
    assert "measured 2026-12-06 13:00 UTC, 3.0 h old on test CPU, 2 cores, load average 1-2 while measuring" in line
    placeholder = cost_profile.load_profile(cost_profile.DEFAULT_GPU_PROFILE)
    assert not placeholder.measured and "NOT MEASURED, stated placeholder" in placeholder.provenance(NOW)
    assert "ASSUMED model FLOPs utilisation" in placeholder.provenance(NOW)
    checked_in = cost_profile.load_profile(cost_profile.DEFAULT_CPU_PROFILE)
    assert checked_in.measured and checked_in.device == "cpu" and " old on " in checked_in.provenance()


def test_a_bad_profile_is_one_line_and_exit_2(tmp_path, capsys):
    spec = str(ROOT / "sweeps/pretraining_quick.yaml")
    assert cli.main(["validate", spec, "--cost", "--profile", str(tmp_path / "missing.json")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("error: --profile") and "does not exist" in line
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    assert cli.main(["validate", spec, "--cost", "--profile", str(tmp_path / "other.json")]) == 2
    assert "is not a throughput profile" in capsys.readouterr().err
    broken = profile_file(tmp_path, lm_trial_s={"local": "fast"})
    assert cli.main(["validate", spec, "--cost", "--profile", str(broken)]) == 2
    assert "lm_trial_s.local is missing or not a number" in capsys.readouterr().err
    assert cli.main(["validate", spec, "--profile", str(broken)]) == 2  # without --cost
    assert capsys.readouterr().err.strip() == "error: --profile is read only with --cost"
    gpu_spec = str(ROOT / "sweeps/pretraining_tinystories.yaml")
    assert cli.main(["validate", gpu_spec, "--cost", "--profile", str(profile_file(tmp_path))]) == 2
    assert "is a cpu profile; this spec runs on GPUs" in capsys.readouterr().err


def test_validate_cost_prints_trials_totals_time_and_disk(tmp_path, capsys):
    spec = tmp_path / "small_lm.yaml"
    spec.write_text(yaml.safe_dump(SMALL))
    assert cli.main(["validate", str(spec), "--cost", "--profile", str(profile_file(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cost of small_lm: 3 trials, 3 chains, 1 at a time"
    assert lines[1].startswith("profile test-cpu")
    assert lines[2].startswith("model tiny: 149,248 parameters; a training row ~")
    header = lines.index(next(line for line in lines if line.startswith("trial (what sets it apart)")))
    trial_lines = lines[header + 1: header + 4]
    assert {line.split()[0] for line in trial_lines} == {"replace", "accumulate", "accumulate_subsample"}
    assert sorted(line.split()[1] for line in trial_lines) == ["2+1", "2+1", "3"]
    assert lines[header + 4].startswith("total: 7 fits (2 more shared with an earlier trial's)")
    assert lines[header + 5].startswith("time: ~") and lines[header + 5].endswith("no GPU")
    assert lines[header + 6].startswith("disk: pools ")
    # a GPU spec: GPU-hours and memory per GPU, at the stated placeholder
    assert cli.main(["validate", str(ROOT / "sweeps/pretraining_tinystories.yaml"), "--cost"]) == 0
    out = capsys.readouterr().out
    assert "NOT MEASURED, stated placeholder" in out and "\nGPU-hours: " in out
    assert "memory per GPU, llama2_126m (bf16, ZeRO-1 over 4 workers" in out
    # a toy spec: its trials and the profile's fixed costs, no FLOPs
    assert cli.main(["validate", str(ROOT / "sweeps/quickstart.yaml"), "--cost", "--profile",
                     str(profile_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "time: at least " in out and "FLOPs" not in out.replace("(no FLOPs", "")
