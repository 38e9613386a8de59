"""Sample-quality figures on the fixed classifier's features (docs/TESTBED.md §5).

FD-cls is the Frechet distance between Gaussians fitted to the classifier's penultimate features of two image sets.
It is *not* FID (different network, different features) and must not be compared with FID values. It is biased:
its expected value grows as the sample shrinks, so only values at equal sample sizes compare.

KID (kernel distance, Binkowski et al. 2018, "Demystifying MMD GANs") is the unbiased estimate of the squared
maximum mean discrepancy with the cubic polynomial kernel ``k(x, y) = (x.y / F + 1)^3`` on the same features: its
expectation is the population distance whatever the sample size (zero for two samples of one distribution, so an
estimate can be slightly negative). Like FD-cls it is computed on the shipped classifier's features, not
Inception's, and compares with no published KID.

Bootstrap intervals of all these figures, and paired differences between methods: :mod:`.bootstrap`.
"""

import warnings
from typing import Dict

import numpy as np
import scipy.linalg
import torch


def frechet_distance(feats_a, feats_b) -> float:
    """``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for feature arrays ``(N, F)``, ``(M, F)``."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make both covariances singular in the same directions
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise the diagonal
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def polynomial_kernel(a, b, degree: int = 3, gamma=None, coef0: float = 1.0) -> torch.Tensor:
    """``(a b^T * gamma + coef0) ** degree`` ``(N, M)`` in float64 for features ``(N, F)``, ``(M, F)``; ``gamma``
    defaults to ``1 / F`` (the KID paper's kernel)."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, F) and (M, F); got {tuple(a.shape)} and {tuple(b.shape)}")
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef0) ** degree


def _unbiased_mmd2(a: torch.Tensor, b: torch.Tensor) -> float:
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    n, m = len(a), len(b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def kernel_inception_distance(feats_a, feats_b, subset_size=1000, num_subsets: int = 100, seed: int = 0) -> float:
    """KID: the unbiased MMD^2 estimate with the cubic polynomial kernel between feature sets ``(N, F)`` and
    ``(M, F)``, averaged over ``num_subsets`` random subsets of ``subset_size`` rows drawn without replacement from
    each set, as in the KID paper (m = 1000, 100 subsets; it bounds the cost at O(m^2) per subset on large sets).
    When both sets have at most ``subset_size`` rows (or ``subset_size`` is None) the full-sample estimate is
    returned: the average over *all* subsets, with the same expectation and a smaller variance.
    """
    a = torch.as_tensor(np.asarray(feats_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(feats_b), dtype=torch.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError(f"feats_a and feats_b need at least 2 rows each; got {len(a)} and {len(b)}")
    if subset_size is None or (len(a) <= subset_size and len(b) <= subset_size):
        return _unbiased_mmd2(a, b)
    if subset_size < 2 or num_subsets < 1:
        raise ValueError(f"subset_size must be >= 2 and num_subsets >= 1; got {subset_size}, {num_subsets}")
    m = min(subset_size, len(a), len(b))
    gen = torch.Generator().manual_seed(int(seed))
    total = 0.0
    for _ in range(num_subsets):
        total += _unbiased_mmd2(a[torch.randperm(len(a), generator=gen)[:m]],
                                b[torch.randperm(len(b), generator=gen)[:m]])
    return total / num_subsets


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.topk(k + 1, dim=1, largest=False).values[:, k]  # index 0 is the point itself


def precision_recall(real, fake, k: int = 3) -> Dict[str, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019) with k-NN balls: precision = share of ``fake`` inside
    some real ball, recall = share of ``real`` inside some fake ball. Inputs ``(N, F)`` features."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    r_real, r_fake = _kth_nn_radius(real, k), _kth_nn_radius(fake, k)
    d = torch.cdist(fake, real)  # (n_fake, n_real)
    precision = (d <= r_real[None, :]).any(1).double().mean().item()
    recall = (d <= r_fake[:, None]).any(0).double().mean().item()
    return {"precision": precision, "recall": recall}


def class_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Share of samples classified as their conditioning class, and the mean probability of that class."""
    return {"class_accuracy": (probs.argmax(-1) == labels).double().mean().item(),
            "class_confidence": probs.gather(1, labels[:, None]).double().mean().item()}
