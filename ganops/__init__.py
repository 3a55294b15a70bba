"""ganops: GAN training on Ray Train, tracked in MLflow."""

__version__ = "0.1.0"
