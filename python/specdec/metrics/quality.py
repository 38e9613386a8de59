"""Sample-quality figures on the fixed classifier's features (docs/TESTBED.md §5).

FD-cls is the Frechet distance between Gaussians fitted to the classifier's penultimate features of two image sets.
It is *not* FID (different network, different features) and must not be compared with FID values.
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
