"""Distances between sets of embeddings: Fréchet (FAD, FAD-inf), kernel (KID) and within-set diversity.

Everything here works on numpy float64 arrays of shape (N, D), one embedding per row, whatever embedder
produced them (see `audiolab.metrics.embedders`). Estimates from few samples are biased (FAD strongly so,
by roughly c/N), which is why FAD-inf and the unbiased KID exist; compare numbers only between runs that
used the same embedder and the same set sizes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg

log = logging.getLogger(__name__)

# fadtk's `score_inf` defaults (Gui et al. 2023): 25 sizes evenly spaced from 500 to all candidates.
FAD_INF_STEPS = 25
FAD_INF_MIN_N = 500
# Below this many candidates a line through FAD(n) against 1/n is noise, not an extrapolation.
FAD_INF_MIN_CANDIDATES = 10
# kid() precomputes full kernel matrices only up to this many float64 entries in all (about 200 MB).
KID_MAX_KERNEL_ENTRIES = 25_000_000


class MetricError(ValueError):
    """A metric cannot be computed faithfully from these inputs (too few samples, numerical breakdown)."""


def _embeddings(emb: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    """`emb` as a finite float64 (N, D) array with at least `min_rows` rows, else MetricError."""
    arr = np.asarray(emb, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricError(f"{name} must be a 2-D (N, D) array of embeddings, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise MetricError(f"{name} needs at least {min_rows} embeddings, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise MetricError(f"{name} has embeddings of dimension 0")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise MetricError(f"{name} has {bad} of {arr.shape[0]} embeddings with NaN or infinite values")
    return arr


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    """MetricError unless both embedding sets have the same dimension."""
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"embedding dimensions differ: {a.shape[1]} vs {b.shape[1]}")


def gaussian_fit(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased (ddof=1) covariance (D, D) of (N, D) embeddings; needs N >= 2."""
    arr = _embeddings(emb, "embeddings")
    # atleast_2d: np.cov returns a 0-d array when D == 1.
    return arr.mean(axis=0), np.atleast_2d(np.cov(arr, rowvar=False, ddof=1))


def _check_psd(eigenvalues: np.ndarray, name: str) -> None:
    """MetricError if a symmetric matrix with these eigenvalues is negative beyond rounding."""
    scale = max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    # Covariances of rank-deficient sets have zero eigenvalues that eigh returns as about -1e-16 * scale;
    # anything far more negative means the input is not a covariance at all, which must not pass silently.
    if eigenvalues.min() < -1e-9 * scale:
        raise MetricError(f"{name} is not positive semi-definite: smallest eigenvalue {eigenvalues.min():.3g}, "
                          f"largest magnitude {scale:.3g}")


def _resolved(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues with those eigh cannot tell from zero (below D * eps * largest) set to exactly zero."""
    # eigh's absolute error is about eps * largest eigenvalue, so a zero eigenvalue (rank-deficient sets,
    # N <= D) comes back as +-1e-16 * scale, and its square root, 1e-8 * sqrt(scale), would add up to a
    # visible error over hundreds of dimensions.
    tol = eigenvalues.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(eigenvalues).max()), 0.0)
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance; eigenvalues indistinguishable from zero are taken as zero."""
    w, v = np.linalg.eigh(sigma)
    _check_psd(w, name)
    return (v * np.sqrt(_resolved(w))) @ v.T


def _trace_sqrt_eigh(root1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) as the sum of sqrt eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2)."""
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # remove rounding asymmetry so eigvalsh sees the matrix we mean
    return float(np.sqrt(_resolved(np.linalg.eigvalsh(inner))).sum())


def _trace_sqrt_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^(1/2)) via scipy.linalg.sqrtm of the non-symmetric product, as pytorch-fid and fadtk do."""
    with warnings.catch_warnings():
        # The reference code calls sqrtm(..., disp=False) (deprecated in scipy 1.16): a singular product is
        # handled below by the finiteness check and the eps retry, so scipy's own warning is noise here.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # scipy's Schur-based sqrtm can return NaN/inf for exactly singular products (e.g. rank-1 covariances).
        log.warning("Frechet distance: sqrtm of the covariance product is not finite (singular product); "
                    "adding eps=%g to the diagonal of both covariances", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise MetricError(f"sqrtm of the covariance product is not finite even with eps={eps} on the diagonal")
    if np.iscomplexobj(covmean):
        # Same test and tolerance as the reference FID code: rounding leaves ~1e-8 imaginary parts;
        # anything larger means the product has negative or complex eigenvalues, i.e. a wrong input.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricError(f"sqrtm of the covariance product has an imaginary component of "
                              f"{np.abs(covmean.imag).max():.3g} (max |imag|) > 1e-3")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "eigh") -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    `method="eigh"` (default) computes Tr((S1 S2)^(1/2)) as the sum of square roots of the eigenvalues of
    the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2 (BA versus AB with
    A = S1^(1/2), B = S1^(1/2) S2), with S1^(1/2) from `eigh` of S1. Eigenvalues within rounding of zero (below
    D * machine eps * the largest, including the slightly negative ones rounding produces) count as exactly 0,
    so rank-deficient covariances (N <= D) add no square roots of rounding noise. It is exact for PSD inputs,
    symmetric matrices never produce imaginary parts, it needs no `eps`, and it is faster than `sqrtm`.
    `method="sqrtm"` follows the reference FAD/FID code (pytorch-fid, fadtk): `scipy.linalg.sqrtm(S1 @ S2)`;
    if that is not finite (a singular product), it retries with `eps` * I added to both covariances and logs
    a warning; an imaginary part above 1e-3 raises MetricError, a smaller one is dropped.
    Both routes agree to rounding on well-conditioned inputs (tests check it); on singular products the
    eps retry of `sqrtm` moves the result by O(sqrt(eps)) per zero eigenvalue. Both raise MetricError for
    covariances that are not positive semi-definite (eigh: by its eigenvalues; sqrtm: via imaginary parts).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if d < 1 or mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                          f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    for name, arr in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise MetricError(f"{name} has NaN or infinite values")
    if method == "eigh":
        _check_psd(np.linalg.eigvalsh(sigma2), "sigma2")
        tr_covmean = _trace_sqrt_eigh(_psd_sqrt(sigma1, "sigma1"), sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fad(reference: np.ndarray, candidates: np.ndarray, method: str = "eigh") -> float:
    """Fréchet distance between Gaussian fits of two (N, D) embedding sets (FAD when they are audio embeddings)."""
    ref, cand = _embeddings(reference, "reference"), _embeddings(candidates, "candidates")
    _same_dim(ref, cand)
    return frechet_distance(*gaussian_fit(ref), *gaussian_fit(cand), method=method)


def _default_fad_inf_sizes(n: int) -> list[int]:
    """fadtk's sizes (25 from 500 to n) with the start lowered to n // 2 for fewer than 1000 candidates."""
    min_n = min(FAD_INF_MIN_N, n // 2)  # a factor of two in n at least, whatever n
    steps = min(FAD_INF_STEPS, n - min_n + 1)
    return sorted({int(s) for s in np.linspace(min_n, n, steps)})


def fad_infinity(reference: np.ndarray, candidates: np.ndarray, sizes: Sequence[int] | None = None,
                 repeats: int = 1, seed: int = 0) -> dict[str, float]:
    """FAD extrapolated to infinitely many candidates (fadtk's FAD-inf, Gui et al. 2023).

    FAD from n samples is biased by about b/n, so FAD(reference, random n candidates) is computed for
    several n and the line FAD(n) = a + b/n is fitted by least squares; FAD-inf is the intercept a.
    The reference's Gaussian fit uses all of it. Returns {"fad_inf": a, "slope": b, "r2": R^2 of the fit},
    where R^2 is 1.0 when all FAD(n) are equal.
    Sizes default to fadtk's (25 evenly spaced from 500 to N = len(candidates)); with N < 1000 they start at
    N // 2 instead of 500. Needs N >= 10. With `repeats` > 1, FAD at each size is the mean of that many
    subsets, which steadies the fit without changing its expectation.
    Unlike fadtk, whose subsets are drawn with replacement, subsets here are drawn without replacement
    (np.random.default_rng(seed)): a subset is then a genuine sample of n from the candidates' distribution,
    so the intercept estimates the distance to that distribution, whereas bootstrap subsets extrapolate to
    the empirical distribution of the N candidates and keep its own ~b/N bias (measured, D=8, 200 candidates
    from the reference's distribution, 40 seeds: intercept 0.009 +- 0.007 here, 0.11 +- 0.01 with
    replacement, plain FAD 0.14). When the means differ, FAD(n) also fluctuates by O(|shift| / sqrt(n)) from
    subset to subset, more than its O(1/n) bias, so expect a low R^2 and a noisy slope unless `repeats` is
    large; the intercept stays close to the true distance.
    """
    ref, cand = _embeddings(reference, "reference"), _embeddings(candidates, "candidates", FAD_INF_MIN_CANDIDATES)
    _same_dim(ref, cand)
    n_cand = cand.shape[0]
    ns = _default_fad_inf_sizes(n_cand) if sizes is None else sorted({int(s) for s in sizes})
    if len(ns) < 2:
        raise MetricError(f"FAD-inf needs at least 2 distinct subset sizes to fit a line, got {ns}")
    if ns[0] < 2 or ns[-1] > n_cand:
        raise MetricError(f"FAD-inf subset sizes must lie in [2, {n_cand}] (the number of candidates), got {ns}")
    if repeats < 1:
        raise MetricError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    mu_ref, sigma_ref = gaussian_fit(ref)
    # The eigh route of frechet_distance, with the reference's square root computed once rather than per
    # subset; sample covariances are PSD by construction, so the subsets skip the PSD check.
    root_ref, trace_ref = _psd_sqrt(sigma_ref, "reference covariance"), float(np.trace(sigma_ref))

    def subset_fad(n: int) -> float:
        mu, sigma = gaussian_fit(cand[rng.choice(n_cand, size=n, replace=False)])
        diff = mu_ref - mu
        return float(diff @ diff + trace_ref + np.trace(sigma) - 2.0 * _trace_sqrt_eigh(root_ref, sigma))

    scores = np.array([np.mean([subset_fad(n) for _ in range(repeats)]) for n in ns])
    xs = 1.0 / np.asarray(ns, dtype=np.float64)
    slope, intercept = np.polyfit(xs, scores, 1)
    ss_res = float(np.sum((scores - (slope * xs + intercept)) ** 2))
    ss_tot = float(np.sum((scores - scores.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"fad_inf": float(intercept), "slope": float(slope), "r2": r2}


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                             coef: float = 1.0) -> float:
    """Unbiased MMD^2 between (m, D) and (n, D) sets under the kernel k(a, b) = (gamma <a, b> + coef)^degree.

    mean of off-diagonal K_xx + mean of off-diagonal K_yy - 2 mean(K_xy); gamma defaults to 1/D.
    Unbiased means it can be slightly negative when the distributions are equal.
    """
    x, y = _embeddings(x, "x"), _embeddings(y, "y")
    _same_dim(x, y)
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)
    m, n = x.shape[0], y.shape[0]
    k_xx = (g * (x @ x.T) + coef) ** degree
    k_yy = (g * (y @ y.T) + coef) ** degree
    k_xy = (g * (x @ y.T) + coef) ** degree
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid(reference: np.ndarray, candidates: np.ndarray, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception/Audio Distance: (mean, std) of unbiased polynomial MMD^2 over random subsets.

    Follows Bińkowski et al. 2018 and torchmetrics' KernelInceptionDistance: kernel (<x, y>/D + 1)^3 and,
    for each of `n_subsets` subsets, `subset_size` rows drawn without replacement from each set
    independently. Subset protocol, for reproducing it: rng = np.random.default_rng(seed); per subset,
    rng.choice(len(reference), m, replace=False) then rng.choice(len(candidates), m, replace=False).
    The std is the population std (ddof=0) over subsets, as torchmetrics returns (`std(unbiased=False)`); it
    describes the spread of one subset's estimate, not the uncertainty of the mean.
    Where torchmetrics raises when a set is smaller than `subset_size`, this clamps m to the smaller set size
    (validation sets are small), so compare KID only between evaluations with the same m; needs m >= 2.
    DrumGAN's evaluation script uses an inverse multiquadratic kernel instead; its numbers are not comparable.
    """
    ref, cand = _embeddings(reference, "reference"), _embeddings(candidates, "candidates")
    _same_dim(ref, cand)
    if n_subsets < 1:
        raise MetricError(f"n_subsets must be >= 1, got {n_subsets}")
    m = min(subset_size, ref.shape[0], cand.shape[0])
    if m < 2:
        raise MetricError(f"KID subsets need at least 2 rows, got subset_size={subset_size} "
                          f"with {ref.shape[0]} reference and {cand.shape[0]} candidate embeddings")
    n_ref, n_cand = ref.shape[0], cand.shape[0]
    full_entries = n_ref * n_ref + n_cand * n_cand + n_ref * n_cand
    # Subsets overlap heavily when the sets are not much larger than m, so computing the three kernel
    # matrices once and indexing them beats 3 * n_subsets (m x m x D) products (measured: 11 s -> 4 s on
    # 2 CPU cores for 2000 embeddings each, D=512, m=1000); memory caps it. Same numbers up to rounding.
    precompute = full_entries <= KID_MAX_KERNEL_ENTRIES
    if precompute:
        gamma = 1.0 / ref.shape[1]
        k_rr = (gamma * (ref @ ref.T) + 1.0) ** 3
        k_cc = (gamma * (cand @ cand.T) + 1.0) ** 3
        k_rc = (gamma * (ref @ cand.T) + 1.0) ** 3
    rng = np.random.default_rng(seed)
    scores = np.empty(n_subsets)
    for i in range(n_subsets):
        idx_ref = rng.choice(n_ref, size=m, replace=False)
        idx_cand = rng.choice(n_cand, size=m, replace=False)
        if precompute:
            sub_rr, sub_cc = k_rr[np.ix_(idx_ref, idx_ref)], k_cc[np.ix_(idx_cand, idx_cand)]
            scores[i] = ((sub_rr.sum() - np.trace(sub_rr)) / (m * (m - 1))
                         + (sub_cc.sum() - np.trace(sub_cc)) / (m * (m - 1))
                         - 2.0 * k_rc[np.ix_(idx_ref, idx_cand)].mean())
        else:
            scores[i] = polynomial_mmd2_unbiased(ref[idx_ref], cand[idx_cand])
    return float(scores.mean()), float(scores.std(ddof=0))


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Diversity of one set: mean of 1 - cos(e_i, e_j) over all unordered pairs i < j; needs N >= 2."""
    arr = _embeddings(emb, "embeddings")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise MetricError(f"{int((norms == 0).sum())} of {arr.shape[0]} embeddings are all zeros; "
                          "their cosine distance is undefined")
    unit = arr / norms[:, None]
    n = unit.shape[0]
    # sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2: O(N D) instead of an N x N Gram matrix.
    total = unit.sum(axis=0)
    mean_cos = (total @ total - np.einsum("ij,ij->", unit, unit)) / (n * (n - 1))
    return float(np.clip(1.0 - mean_cos, 0.0, 2.0))
