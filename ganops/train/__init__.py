"""Training: the GAN step, the per-worker loop, checkpoints, sample grids and the Ray launcher."""
