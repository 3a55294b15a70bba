"""Inception score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), over splits.

The images are cut into ``splits`` consecutive parts; each part's score uses its own
marginal p(y), and the mean and standard deviation over parts are reported, as in the
original code (10 splits). p(y|x) is the softmax of the FID network's bias-free logits
over all 1008 outputs (see ``ganops.evaluate.inception``), the torch-fidelity convention.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

SPLITS = 10


def inception_score(logits: np.ndarray, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) over min(splits, n) splits of [n, classes] logits."""
    logits = np.asarray(logits, dtype=np.float64)
    n = len(logits)
    if logits.ndim != 2 or n < 1:
        raise ValueError(f"need [n, classes] logits, got {logits.shape}")
    splits = max(1, min(splits, n))
    log_p = log_softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        p = np.exp(part)
        # log of the marginal, computed in log space so that tiny probabilities stay finite.
        log_marginal = np.log(p.mean(axis=0))
        kl = (p * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
