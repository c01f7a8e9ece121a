"""The engine: a chain's config (chain), which rows it trains on (workflows), its pool in
memory or on disk (pool, shards), its data-only checkpoints (checkpoint), the one mean/SE
rule (aggregate) and the chain loop (loop). Plain Python with numpy and pyarrow: nothing
here imports Ray, MLflow, YAML or any other part of collapse_ray above it."""
