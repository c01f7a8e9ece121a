"""collapse_ray: model-fitting chains under replace / accumulate / accumulate_subsample,
fanned out with Ray Tune and logged to MLflow.

Layers, inner to outer:
  tasks/       one module per task setting (fit, sample, evaluate), no Ray
  workflows    which pool rows each iteration trains on
  pool         real + synthetic rows with their iteration of origin; Parquet on disk
  loop         the one place where task, workflow and pool meet (plain Python)
  sweep        Ray Tune fan-out of chains; tracking: MLflow logging and the results table
  cli          `collapse-ray validate | run | results`
"""

__version__ = "0.1.0"
