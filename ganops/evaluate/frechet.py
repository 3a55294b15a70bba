"""Fréchet distance between two Gaussians fitted to feature sets (FID on Inception pool3).

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr( (S1^½ S2 S1^½)^½ )

The usual code takes ``scipy.linalg.sqrtm(S1 @ S2)``: S1 S2 is not symmetric, its square
root comes from a Schur decomposition that can return complex values (and a NaN FID) when
the covariances are singular, which they are whenever there are fewer samples than the
2048 feature dimensions. Here every matrix whose root is taken is symmetric positive
semi-definite, so ``eigh`` gives real eigenvalues; rounding can leave tiny negative ones,
which are clipped to zero. tr((S1^½ S2 S1^½)^½) equals tr((S1 S2)^½): the two matrices
are similar and have the same eigenvalues.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased, as ``np.cov``) of [n, d] features, n >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape [n, d], got {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (len(x) - 1)
    return mu, sigma


def _clean(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0.

    Below ``n * eps * max|w|`` (numpy's matrix_rank tolerance) an eigenvalue cannot be told
    from zero; left in, the square root would turn each 1e-16 into 1e-8 and sum hundreds
    of them over the null space of a singular covariance.
    """
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix."""
    w, v = linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(_clean(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^½) through symmetric eigendecompositions only."""
    root1 = _sym_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    w = linalg.eigh((inner + inner.T) / 2.0, eigvals_only=True)
    return float(np.sqrt(_clean(w)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The squared Fréchet distance; never negative (rounding below zero is reported as 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(d2), 0.0)


def frechet_distance_features(
    real: np.ndarray, fake: np.ndarray, real_stats: tuple[np.ndarray, np.ndarray] | None = None
) -> float:
    """The same distance from the feature matrices, cheaper when a set is smaller than d.

    With centred features A (n1 × d) and B (n2 × d), S1 S2 = Aᵀ A Bᵀ B / c has the same
    non-zero eigenvalues as the symmetric PSD n × n matrix M Mᵀ, M = A Bᵀ / √c,
    c = (n1 - 1)(n2 - 1): an eigendecomposition of the smaller side instead of two of d × d
    (16 samples of 2048-d features: milliseconds instead of seconds).
    ``real_stats``: the real set's (mean, covariance), when already known.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    mu1, sigma1 = real_stats if real_stats is not None else gaussian_stats(real)
    mu2, sigma2 = gaussian_stats(fake)
    n1, n2, d = len(real), len(fake), real.shape[1]
    if min(n1, n2) >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a, b = real - mu1, fake - mu2
    m = (a @ b.T) / np.sqrt((n1 - 1) * (n2 - 1))
    gram = m @ m.T if n1 <= n2 else m.T @ m
    w = linalg.eigh((gram + gram.T) / 2.0, eigvals_only=True)
    diff = np.asarray(mu1, np.float64) - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * float(np.sqrt(_clean(w)).sum())
    return max(float(d2), 0.0)
