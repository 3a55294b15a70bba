"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

Each set's manifold is the union of balls around its points, each ball reaching the
point's k-th nearest neighbour in the same set (k = 3). Precision: the share of generated
samples inside the real manifold; recall: the share of real samples inside the generated
manifold. Distances are computed in row blocks, so memory stays bounded for 50k samples.
"""

from __future__ import annotations

import numpy as np

K = 3
_BLOCK = 1024


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)]; rounding below zero clipped."""
    d2 = _sq_norms(a)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(d2, 0.0, None))


def knn_radii(x: np.ndarray, k: int = K) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in ``x`` (itself excluded)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs more than k points (got {len(x)})")
    x_sq = _sq_norms(x)
    radii = np.empty(len(x))
    for i in range(0, len(x), _BLOCK):
        d = _distances(x[i : i + _BLOCK], x, x_sq)
        # Index k of each sorted row: index 0 is the point itself (distance 0).
        radii[i : i + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` within radii[j] of some centre j."""
    c_sq = _sq_norms(centres)
    inside = np.empty(len(points), dtype=bool)
    for i in range(0, len(points), _BLOCK):
        d = _distances(points[i : i + _BLOCK], centres, c_sq)
        inside[i : i + _BLOCK] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def neighbourhood_size(n_real: int, n_fake: int, k: int = K) -> int:
    """k, capped so that each set has a k-th neighbour (tiny test sets)."""
    return max(1, min(k, n_real - 1, n_fake - 1))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K) -> tuple[float, float]:
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features of different shapes: {real.shape} and {fake.shape}")
    k = neighbourhood_size(len(real), len(fake), k)
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
