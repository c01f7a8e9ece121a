"""collapse_ray: model-fitting chains under replace / accumulate / accumulate_subsample,
fanned out with Ray Tune and logged to MLflow.

Layers, inner to outer (tests/test_layers.py holds every import to them):
  validation, atomic, faults, ...   leaf modules that import nothing of ours
  core/        the engine: chain config, workflows, pools and shards, checkpoints, the chain
               loop (plain Python + numpy/pyarrow: no Ray, MLflow or YAML)
  text/, neural/   the language-model and neural-network libraries the tasks use
  tasks/       one module per task setting (fit, sample, evaluate)
  tracking/    MLflow: the store, runs, the chain sink, the UI view, the results table
  sweep/       the spec, Ray Tune fan-out, resume and growth, conclusions, search, cost
  cli          `collapse-ray validate | run | results`
"""

__version__ = "0.1.0"
