"""DeepSpeed for a training fit, without the parts a fit never uses.

Every fit's workers import DeepSpeed afresh (Ray Train starts new workers per fit), and
three things DeepSpeed 0.19 loads on the way are never used by our fits (we pass a torch
optimizer, train with gloo on CPU or NCCL on GPU, and never autotune):
- MLflow, imported by `deepspeed.autotuning` (which `deepspeed.runtime.config` imports)
  inside a `try`: ~1.2 s a worker;
- the Muon optimizer's module, imported by the ZeRO optimizers for an `isinstance`
  check; its kernels are wrapped in `torch.compile` at import, which loads TorchInductor:
  ~2.7 s a worker;
- the shared-memory all-reduce op, built by `init_distributed` for DeepSpeed inference's
  `inference_all_reduce` only; a new venv's first fit compiles it (55-59 CPU-s).
Each is skipped here in a way that fails safe: if DeepSpeed moves the import, the fit
still runs and only pays the cost again (tests/test_lm_worker_eval.py notices).
`COLLAPSE_RAY_LEAN_DEEPSPEED=0` turns all of it off (DeepSpeed's own import path).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

LEAN_ENV = "COLLAPSE_RAY_LEAN_DEEPSPEED"
NOT_USED_BY_A_FIT = ("mlflow",)  # imported by deepspeed.autotuning, which a fit never runs
MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def lean() -> bool:
    return os.environ.get(LEAN_ENV, "1") != "0"


def import_deepspeed():
    """`deepspeed`, imported without the modules a fit never uses (when lean)."""
    if not lean():
        import deepspeed

        return deepspeed
    if "deepspeed" not in sys.modules:
        with _imports_refused(NOT_USED_BY_A_FIT):
            import deepspeed
    import deepspeed

    _import_muon_uncompiled()  # also where something else imported deepspeed first
    return deepspeed


def init_distributed(deepspeed, backend: str) -> None:
    """`deepspeed.init_distributed` without building the shared-memory op (when lean):
    it serves DeepSpeed inference's all-reduce only, and its first build compiles C++."""
    comm_torch = sys.modules.get("deepspeed.comm.torch")
    if not lean() or comm_torch is None or not hasattr(comm_torch, "build_shm_op"):
        deepspeed.init_distributed(dist_backend=backend)
        return
    build = comm_torch.build_shm_op
    comm_torch.build_shm_op = lambda: None  # what DeepSpeed itself returns where the op is not supported
    try:
        deepspeed.init_distributed(dist_backend=backend)
    finally:
        comm_torch.build_shm_op = build


@contextmanager
def _imports_refused(names: tuple[str, ...]):
    """`import name` raises ImportError inside (a None entry in sys.modules); afterwards
    the names import normally again, so the trial's own MLflow (local backend) is unharmed."""
    refused = [name for name in names if name not in sys.modules]
    for name in refused:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in refused:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _import_muon_uncompiled() -> None:
    """Import the Muon module with DeepSpeed's `compiler.compile()` decorator made the
    identity for that import only: the real classes (so DeepSpeed's isinstance checks
    answer truly), with Muon's kernels eager instead of compiled; no fit here uses Muon."""
    if MUON_MODULE in sys.modules:
        return
    try:
        from deepspeed.runtime import compiler
    except ImportError:
        return
    compile_decorator = getattr(compiler, "compile", None)
    if compile_decorator is None:
        return
    compiler.compile = lambda *args, **kwargs: (lambda fn: fn)
    try:
        __import__(MUON_MODULE)
    except ImportError:  # moved or gone in this DeepSpeed: nothing to do
        pass
    finally:
        compiler.compile = compile_decorator
