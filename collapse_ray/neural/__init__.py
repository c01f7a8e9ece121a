"""Torch and data helpers of the neural task settings (tasks/vae.py, tasks/diffusion.py).

- data: the real data sets (scikit-learn's 8x8 digits, moons, swiss roll, a local image
  folder or Parquet), all offline;
- batched: independent small networks for a whole batch of chains, trained in one loop
  (weights carry a leading chain axis, so one matmul serves every chain);
- quality: sample-quality numbers that need no download (kernel MMD, a digit classifier);
- render: PNG sample grids and scatter plots, logged per iteration to MLflow.
"""
