"""MLflow: the only package that imports it. One job per module:

  layout       the layout in MLflow (experiments, sweep, chain and cell runs), its tag and artifact names
  credentials  credentials in a tracking URI: split off, redacted, scrubbed, moved into the environment
  store        the tracking URI, the retrying client, reachability, the migrated-store template, experiments
  params       what a run records and is called: params, tags, run names
  runs         sweep and chain runs: made or found again, provenance, datasets, finished with their tables
  sink         the chain loop's metric sink (exactly-once logging)
  view         links into the MLflow UI and the saved view a sweep opens with
  results      the results table read back from the store

Import names from the module that holds them (`from collapse_ray.tracking.store import client_for`).
"""
