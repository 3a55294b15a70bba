"""The score formulas against independent computations on random features (numpy/scipy only)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from scipy.special import softmax

from ganops.evaluate import inception_score as isc
from ganops.evaluate import kid, precision_recall
from ganops.evaluate.frechet import frechet_distance, frechet_distance_features, gaussian_stats, trace_sqrt_product


def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """n samples of one correlated d-dimensional Gaussian (the same for every seed), moved and scaled."""
    mixing = np.random.default_rng(d).standard_normal((d, d)) / np.sqrt(d)
    return (np.random.default_rng(seed).standard_normal((n, d)) @ mixing) * scale + shift


def _fid_with_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, as pytorch-fid writes it: scipy's sqrtm of S1 S2."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_fid_matches_the_sqrtm_formula_on_full_rank_covariances() -> None:
    a, b = _features(400, 24, seed=1), _features(300, 24, seed=2, shift=0.3, scale=1.2)
    mine = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert mine == pytest.approx(_fid_with_sqrtm(a, b), rel=1e-9)
    mu, sigma = gaussian_stats(a)
    assert np.allclose(mu, a.mean(0)) and np.allclose(sigma, np.cov(a, rowvar=False))


def test_fid_of_two_gaussians_has_its_closed_form() -> None:
    # N(m1, diag(v1)) vs N(m2, diag(v2)): |m1-m2|² + Σ (√v1 - √v2)².
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_score_zero_and_a_shifted_set_scores_more() -> None:
    a = _features(200, 32, seed=3)
    stats = gaussian_stats(a)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-8)
    near = frechet_distance(*stats, *gaussian_stats(a + 0.1))
    far = frechet_distance(*stats, *gaussian_stats(a + 1.0))
    assert 0 < near < far
    assert near == pytest.approx(32 * 0.1**2, rel=1e-6)  # a pure shift adds |Δmu|² and nothing else
    assert frechet_distance(*stats, *gaussian_stats(a * 2.0)) > 1.0


def test_fid_stays_real_and_finite_when_covariances_are_rank_deficient() -> None:
    # n < d: both covariances are singular (rank n-1), as with 50 samples of 2048-d features.
    d = 256
    a, b = _features(50, d, seed=4), _features(60, d, seed=5, shift=0.05)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert np.linalg.matrix_rank(s1) < d and np.linalg.matrix_rank(s2) < d
    mine = frechet_distance(a.mean(0), s1, b.mean(0), s2)
    assert np.isfinite(mine) and mine > 0
    # An independent value: the eigenvalues of S1 S2 (real and >= 0 in exact arithmetic).
    ev = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(ev.real, 0, None)).sum()
    independent = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert mine == pytest.approx(independent, rel=1e-6)
    assert trace_sqrt_product(s1, s1) == pytest.approx(np.trace(s1), rel=1e-8)
    assert frechet_distance(a.mean(0), s1, a.mean(0), s1) == pytest.approx(0.0, abs=1e-7)


def test_fid_from_features_takes_the_small_side_and_agrees_with_the_covariance_route() -> None:
    d = 300
    for n1, n2 in ((40, 70), (90, 25), (400, 350)):  # smaller than d on one side, both, neither
        a, b = _features(n1, d, seed=n1), _features(n2, d, seed=n2 + 1, shift=0.1, scale=1.1)
        via_cov = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
        assert frechet_distance_features(a, b) == pytest.approx(via_cov, rel=1e-8), (n1, n2)
        assert frechet_distance_features(a, b, gaussian_stats(a)) == pytest.approx(via_cov, rel=1e-8)
    full = _features(400, 20, seed=20), _features(300, 20, seed=21, shift=0.2)
    assert frechet_distance_features(*full) == pytest.approx(_fid_with_sqrtm(*full), rel=1e-9)
    same = _features(30, d, seed=22)
    assert frechet_distance_features(same, same.copy()) == pytest.approx(0.0, abs=1e-7)


def _kid_direct(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² by its definition, one pair at a time."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(u @ v) / d + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel() -> None:
    x, y = _features(30, 8, seed=6), _features(30, 8, seed=7, shift=0.5)
    assert kid.mmd2_unbiased(x, y) == pytest.approx(_kid_direct(x, y), rel=1e-10)
    # One subset holding every sample is the plain estimate, with no spread.
    mean, std = kid.kernel_inception_distance(x, y, subsets=1, subset_size=30)
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-10) and std == 0.0


def test_kid_subsets_are_averaged_and_capped_at_the_sample_count() -> None:
    x, y = _features(50, 8, seed=8), _features(40, 8, seed=9, shift=0.2)
    mean, std = kid.kernel_inception_distance(x, y, subsets=20, subset_size=1000)
    assert kid.subset_size_for(50, 40) == 40
    rng = np.random.default_rng(kid.SEED)
    expected = [
        _kid_direct(x[rng.choice(50, 40, replace=False)], y[rng.choice(40, 40, replace=False)]) for _ in range(20)
    ]
    assert mean == pytest.approx(np.mean(expected), rel=1e-9) and std == pytest.approx(np.std(expected), rel=1e-9)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    same = [kid.kernel_inception_distance(_features(200, 16, seed=s), _features(200, 16, seed=s + 100))[0]
            for s in range(5)]  # fmt: skip
    shifted = kid.kernel_inception_distance(_features(200, 16, seed=0), _features(200, 16, seed=100, shift=0.5))[0]
    assert abs(np.mean(same)) < 0.2 * shifted
    assert min(same) < 0 < shifted  # unbiased: the estimate is not bounded below by zero


def _is_from_definition(logits: np.ndarray, splits: int) -> tuple[float, float]:
    scores = []
    for part in np.array_split(logits, splits):
        p = softmax(part, axis=1)
        py = p.mean(0)
        kls = [sum(pi[c] * np.log(pi[c] / py[c]) for c in range(len(py))) for pi in p]
        scores.append(np.exp(np.mean(kls)))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_from_its_definition() -> None:
    logits = np.random.default_rng(10).standard_normal((100, 12)) * 3
    mean, std = isc.inception_score(logits, splits=10)
    exp_mean, exp_std = _is_from_definition(logits, 10)
    assert mean == pytest.approx(exp_mean, rel=1e-10) and std == pytest.approx(exp_std, rel=1e-10)


def test_inception_score_bounds_one_and_the_class_count() -> None:
    # Every image certain of its class, the classes balanced: IS = number of classes.
    k = 8
    confident = np.full((8 * k, k), -50.0)
    confident[np.arange(8 * k), np.arange(8 * k) % k] = 50.0
    assert isc.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    # Every image has the same prediction: IS = 1 (KL is zero).
    same = np.tile(np.random.default_rng(11).standard_normal(k), (40, 1))
    assert isc.inception_score(same, splits=4) == pytest.approx((1.0, 0.0), abs=1e-12)
    # Large logits stay finite (log-softmax, not log of a softmax that underflowed).
    assert np.isfinite(isc.inception_score(confident * 100, splits=2)[0])


def _pr_direct(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    from scipy.spatial.distance import cdist

    def radii(x: np.ndarray) -> np.ndarray:
        return np.sort(cdist(x, x), axis=1)[:, k]

    precision = (cdist(fake, real) <= radii(real)[None, :]).any(axis=1).mean()
    recall = (cdist(real, fake) <= radii(fake)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def test_precision_recall_match_the_knn_definition() -> None:
    real, fake = _features(300, 10, seed=12), _features(250, 10, seed=13, shift=0.4, scale=0.7)
    assert precision_recall.precision_recall(real, fake, k=3) == pytest.approx(_pr_direct(real, fake, 3), abs=1e-12)
    # More than one block of rows (the blocked distance code must agree across block borders).
    many_real, many_fake = _features(1500, 6, seed=14), _features(1100, 6, seed=15, shift=0.2)
    got = precision_recall.precision_recall(many_real, many_fake, k=3)
    assert got == pytest.approx(_pr_direct(many_real, many_fake, 3), abs=1e-12)


def test_precision_recall_of_identical_and_disjoint_sets() -> None:
    real = _features(200, 8, seed=16)
    assert precision_recall.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Data in two far-apart modes, a generator that covers one: precise, but half is missed.
    two_modes = np.concatenate([real, real + 50.0])
    one_mode = _features(200, 8, seed=17)
    p, r = precision_recall.precision_recall(two_modes, one_mode)
    assert p > 0.8 and 0.3 < r <= 0.5
