"""What the neural task settings (tasks/vae.py, tasks/diffusion.py,
tasks/conformer_diffusion.py) share, each piece in one place:

- data: the real data sets (scikit-learn's 8x8 digits, moons, swiss roll, a local image
  folder or Parquet), all offline; the split-size checks; the per-chain draws of real
  rows (distinct training rows, fresh rows with replacement); the seed range;
- batched: independent small networks for a whole batch of chains, trained in one loop
  (weights carry a leading chain axis, so one matmul serves every chain), one torch
  generator per chain from its fixed seed or its numpy generator, per-chain noise, a
  one-chain copy of chain 0 for the pictures;
- ddpm: the DDPM schedule, noising, the draws fixed per chain, training draws and
  ancestral sampling of both diffusion tasks;
- quality: sample-quality numbers that need no download (kernel MMD in blocks of chains
  with each data set's fixed kernel width, a digit classifier);
- render: PNG sample grids and scatter plots, logged per iteration to MLflow;
- egnn, molecules: the conformer task's equivariant network and conformer library.

Only batched and egnn import torch at module level; the tasks import them where they
train, so importing the task registry does not load torch.
"""
