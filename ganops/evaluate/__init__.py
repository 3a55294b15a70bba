"""Generative quality scores (FID, KID, IS, precision/recall) and ``ganops evaluate``."""
