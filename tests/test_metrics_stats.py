"""The quality metrics themselves, on distributions whose answers are known (specdec.metrics.quality / .bootstrap).

* KID is the unbiased MMD^2 with the cubic polynomial kernel: its mean over many draws is the population value,
  computed exactly here from moment tensors (``k(x, y) = sum_j C(3, j) (x.y / F)^j``, so
  ``MMD^2 = sum_j C(3, j) / F^j ||M_j(P) - M_j(Q)||^2`` with ``M_j`` the j-th moment tensor), which is 0 for one
  distribution and grows with a mean shift.
* The bootstrap's weighted estimators equal the plain ones on explicitly expanded resamples.
* Bootstrap intervals cover the truth at about their nominal rate, and the paired difference of two coupled sets
  from one distribution lands beyond chance at about the nominal false-alarm rate, for every figure.
"""

import math

import numpy as np
import pytest
import torch

from specdec.metrics import bootstrap as bs
from specdec.metrics.quality import (frechet_distance, kernel_inception_distance, polynomial_kernel,
                                     precision_recall)

DIM = 4


def gaussian_moments(mean: np.ndarray, cov: np.ndarray):
    """First three raw moment tensors of N(mean, cov)."""
    m2 = cov + np.outer(mean, mean)
    m3 = np.einsum("i,j,k->ijk", mean, mean, mean)
    m3 = m3 + np.einsum("i,jk->ijk", mean, cov) + np.einsum("j,ik->ijk", mean, cov) + np.einsum("k,ij->ijk", mean, cov)
    return mean, m2, m3


def mixture_moments(means, cov):
    """Moment tensors of an equal-weight mixture of N(means[c], cov)."""
    parts = [gaussian_moments(m, cov) for m in means]
    return [sum(p[j] for p in parts) / len(parts) for j in range(3)]


def population_kid(moments_p, moments_q, dim: int = DIM) -> float:
    """Exact MMD^2 under ``(x.y / dim + 1)^3`` from the moment tensors of P and Q."""
    return float(sum(math.comb(3, j + 1) / dim ** (j + 1) * np.sum((moments_p[j] - moments_q[j]) ** 2)
                     for j in range(3)))


def kid_difference_given_real(moments_q, moments_p, real: torch.Tensor, dim: int = DIM) -> float:
    """Exact ``E[KID(Q-sample, real) - KID(P-sample, real) | real]`` for fixed ``real`` points: the within-set
    terms ``E k(x, x')`` from the moment tensors, the cross terms ``E_x k(x, r) = sum_j C(3, j) <M_j, r^j> / dim^j``
    averaged over the real points (the within-real term cancels)."""
    r = real.double().numpy()
    contractions = [r, np.einsum("ni,nj->nij", r, r), np.einsum("ni,nj,nk->nijk", r, r, r)]

    def within(m):
        return sum(math.comb(3, j + 1) / dim ** (j + 1) * np.sum(m[j] ** 2) for j in range(3))

    def cross(m):
        return sum(math.comb(3, j + 1) / dim ** (j + 1) * np.mean(np.sum(contractions[j] * m[j], axis=tuple(
            range(1, j + 2)))) for j in range(3))

    return float(within(moments_q) - within(moments_p) - 2 * (cross(moments_q) - cross(moments_p)))


def class_means(num_classes: int, shift: float = 0.0) -> np.ndarray:
    means = np.zeros((num_classes, DIM))
    means[:, 0] = np.arange(num_classes) * 0.5
    means[:, 1] = shift
    return means


def draw(means: np.ndarray, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.as_tensor(means, dtype=torch.float64)[labels] + torch.randn(len(labels), DIM, generator=gen,
                                                                             dtype=torch.float64)


# --- KID ------------------------------------------------------------------------------------------------------------

def test_polynomial_kernel_and_kid_match_their_definitions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    k = polynomial_kernel(a, b)
    assert k[2, 4].item() == pytest.approx((float(a[2] @ b[4]) / 3 + 1) ** 3)
    kern = lambda x, y: (float(x @ y) / 3 + 1) ** 3  # noqa: E731
    within_a = sum(kern(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    within_b = sum(kern(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    cross = sum(kern(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert kernel_inception_distance(a, b) == pytest.approx(within_a + within_b - 2 * cross, rel=1e-12)
    with pytest.raises(ValueError, match="feats_a"):
        kernel_inception_distance(a[:1], b)
    with pytest.raises(ValueError, match="features"):
        polynomial_kernel(a, b[:, :2])


def test_kid_is_unbiased_zero_for_one_distribution_and_grows_with_a_known_shift():
    """Mean over 60 draws of 200 vs 200 points is the exact population MMD^2 (within 4 standard errors), 0 for one
    distribution; estimates grow with the shift as the truth does."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(200) % 2
    real_m = mixture_moments(class_means(2), np.eye(DIM))
    truths, means = [], []
    for shift in (0.0, 0.3, 0.6, 1.0):
        truth = population_kid(real_m, mixture_moments(class_means(2, shift), np.eye(DIM)))
        est = np.array([kernel_inception_distance(draw(class_means(2), labels, gen),
                                                  draw(class_means(2, shift), labels, gen)) for _ in range(60)])
        se = est.std(ddof=1) / math.sqrt(len(est))
        assert abs(est.mean() - truth) < 4 * se, (shift, est.mean(), truth, se)
        truths.append(truth)
        means.append(est.mean())
    assert truths[0] == 0.0
    assert np.all(np.diff(truths) > 0) and np.all(np.diff(means) > 0)  # grows with the shift


def test_kid_subset_estimator_agrees_with_the_full_sample_estimate():
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(600) % 2
    a, b = draw(class_means(2), labels, gen), draw(class_means(2, 0.5), labels, gen)
    full = kernel_inception_distance(a, b, subset_size=None)
    assert kernel_inception_distance(a, b, subset_size=600) == full  # one subset = everything
    subsets = kernel_inception_distance(a, b, subset_size=200, num_subsets=200, seed=0)
    assert subsets == pytest.approx(full, rel=0.1)


# --- the weighted estimators behind the bootstrap ---------------------------------------------------------------------

def test_stratified_counts_resample_within_each_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    counts = bs.stratified_bootstrap_counts(labels, 50, torch.Generator().manual_seed(0))
    assert counts.shape == (50, 9) and counts.dtype == torch.float64
    for c in range(3):
        assert torch.all(counts[:, labels == c].sum(1) == (labels == c).sum())
    assert counts.std(0).min() > 0  # every row is actually resampled
    with pytest.raises(ValueError, match="num_replicates"):
        bs.stratified_bootstrap_counts(labels, 0, torch.Generator())


def _expanded(x: torch.Tensor, w: torch.Tensor):
    """Rows of ``x`` repeated ``w`` times, and each copy's original row."""
    origin = torch.repeat_interleave(torch.arange(len(x)), w.long())
    return x[origin], origin


def _brute_radii(x, origin, k):
    d = torch.cdist(x, x)
    d[origin[:, None] == origin[None, :]] = float("inf")  # copies of the point itself are not neighbours
    return d.sort(1).values[:, k - 1]


def test_weighted_figures_equal_the_plain_ones_on_expanded_resamples():
    """Replicate b of every figure equals the figure computed on the explicit resample (rows repeated by their
    multiplicity), with copies of one row not counted as independent neighbours / kernel pairs."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(30) % 3
    real, fake = draw(class_means(3), labels, gen), draw(class_means(3, 0.4), labels, gen)
    correct = (torch.rand(30, generator=gen) < 0.7).double()
    judge = bs.BootstrapJudge(real, labels, labels, num_replicates=5, seed=0, k=3, chunk=2)
    judged = judge.judge(fake, correct)
    # Point estimates are the plain figures.
    assert judged.point["fd_cls"] == pytest.approx(frechet_distance(real, fake), rel=1e-9)
    assert judged.point["kid"] == pytest.approx(kernel_inception_distance(real, fake), rel=1e-9)
    pr = precision_recall(real, fake)
    assert judged.point["precision"] == pr["precision"] and judged.point["recall"] == pr["recall"]
    assert judged.point["class_accuracy"] == pytest.approx(float(correct.mean()))
    for b in range(5):
        w, v = judge.gen_weights[b + 1], judge.real_weights[b + 1]
        xf, of = _expanded(fake, w)
        xr, orr = _expanded(real, v)
        assert judged.replicates["fd_cls"][b] == pytest.approx(frechet_distance(xr, xf), rel=1e-7)
        assert judged.replicates["class_accuracy"][b] == pytest.approx(float(correct[of].mean()))
        k_ff, k_rr = polynomial_kernel(xf, xf), polynomial_kernel(xr, xr)
        off_f, off_r = of[:, None] != of[None, :], orr[:, None] != orr[None, :]
        kid = k_ff[off_f].mean() + k_rr[off_r].mean() - 2 * polynomial_kernel(xf, xr).mean()
        assert judged.replicates["kid"][b] == pytest.approx(float(kid), rel=1e-9)
        r_real, r_fake = _brute_radii(xr, orr, 3), _brute_radii(xf, of, 3)
        d = torch.cdist(xf, xr)
        precision = (d <= r_real[None, :]).any(1).double().mean()
        recall = (d <= r_fake[:, None]).any(0).double().mean()
        assert judged.replicates["precision"][b] == pytest.approx(float(precision))
        assert judged.replicates["recall"][b] == pytest.approx(float(recall))


def test_bad_inputs_are_clear_errors():
    labels = torch.arange(20) % 2
    feats = torch.randn(20, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="real_features"):
        bs.BootstrapJudge(feats, labels[:10], labels)
    judge = bs.BootstrapJudge(feats, labels, labels, num_replicates=4)
    with pytest.raises(ValueError, match="features"):
        judge.judge(feats[:10], torch.ones(10))
    with pytest.raises(ValueError, match="level"):
        bs.normal_interval(0.0, [0.0, 1.0], level=1.5)


# --- calibration: coverage and false alarms on toys -----------------------------------------------------------------

REPEATS, N, REPLICATES = 100, 100, 100


def _coupled(base: torch.Tensor, means: np.ndarray, labels: torch.Tensor, gen: torch.Generator, share: float):
    """A second set that shares rows with ``base`` (same seed -> same sample) with probability ``share`` and is an
    independent draw from ``means`` otherwise: like a method coupled to AR through shared uniforms."""
    fresh = draw(means, labels, gen)
    same = torch.rand(len(labels), generator=gen) < share
    return torch.where(same[:, None], base, fresh)


def test_intervals_cover_the_truth_and_paired_differences_keep_the_false_alarm_rate():
    """100 toy experiments (2 classes, 100 generated vs 100 real points in 4-d, 100 replicates each). "AR" samples a
    shifted copy of the real distribution (an imperfect model), a "method" either AR's own distribution, half its
    rows identical to AR's (an exact method coupled through shared seeds), or a further-shifted one whose noise is
    AR's (a relaxed method, same seeds):

    * the KID intervals cover the exact population KIDs, the class-accuracy interval the true accuracy, and the
      paired interval of the KID difference the exact difference given the real points (the reference is held
      fixed in differences; :meth:`Judged.difference`), at about 95 %;
    * the exact-like method is declared different from AR (its paired difference's interval excludes zero) at about
      the nominal 5 % or less on every figure;
    * pairing matters: the paired interval of the difference is narrower than one that ignores the coupling.
    """
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(N) % 2
    real_means, ar_means, shifted = class_means(2), class_means(2, 0.5), class_means(2, 1.0)
    real_m = mixture_moments(real_means, np.eye(DIM))
    kid_ar = population_kid(real_m, mixture_moments(ar_means, np.eye(DIM)))
    ar_m, shifted_m = mixture_moments(ar_means, np.eye(DIM)), mixture_moments(shifted, np.eye(DIM))
    kid_shifted = population_kid(real_m, shifted_m)
    many_real = draw(real_means, torch.arange(40000) % 2, gen)  # the conditional truth averages to the population one
    assert kid_difference_given_real(shifted_m, ar_m, many_real) == pytest.approx(kid_shifted - kid_ar, rel=0.03)
    p_correct = 0.8
    covered = {"kid": 0, "kid_shifted": 0, "class_accuracy": 0, "kid_diff": 0}
    alarms = dict.fromkeys(bs.FIGURES, 0)
    narrower = 0
    for r in range(REPEATS):
        real = draw(real_means, labels, gen)
        ar = draw(ar_means, labels, gen)
        correct = (torch.rand(N, generator=gen) < p_correct).double()
        judge = bs.BootstrapJudge(real, labels, labels, num_replicates=REPLICATES, seed=r, chunk=REPLICATES)
        ar_j = judge.judge(ar, correct)
        lo, hi = ar_j.interval("kid")
        covered["kid"] += lo <= kid_ar <= hi
        lo, hi = ar_j.interval("class_accuracy")
        covered["class_accuracy"] += lo <= p_correct <= hi
        # AR's distribution, half the rows shared with AR: any difference is chance.
        same_correct = torch.where(torch.rand(N, generator=gen) < 0.5, correct,
                                   (torch.rand(N, generator=gen) < p_correct).double())
        null = judge.judge(_coupled(ar, ar_means, labels, gen, 0.5), same_correct).difference(ar_j)
        for f in bs.FIGURES:
            alarms[f] += null[f]["beyond_chance"]
        # Shifted further, with AR's noise (same seeds): the paired interval must cover the true KID difference.
        noise = ar - torch.as_tensor(ar_means, dtype=torch.float64)[labels]
        method_j = judge.judge(torch.as_tensor(shifted, dtype=torch.float64)[labels] + noise, correct)
        lo, hi = method_j.interval("kid")
        covered["kid_shifted"] += lo <= kid_shifted <= hi
        diff = method_j.difference(ar_j)["kid"]
        covered["kid_diff"] += diff["lo"] <= kid_difference_given_real(shifted_m, ar_m, real) <= diff["hi"]
        unpaired = 1.96 * math.hypot(method_j.paired_replicates["kid"].std(ddof=1),
                                     ar_j.paired_replicates["kid"].std(ddof=1))
        narrower += (diff["hi"] - diff["lo"]) / 2 < unpaired
    rates = {k: v / REPEATS for k, v in covered.items()}
    alarm_rates = {k: v / REPEATS for k, v in alarms.items()}
    for k, rate in rates.items():
        assert 0.87 <= rate <= 0.995, (k, rates)
    for k, rate in alarm_rates.items():
        assert rate <= 0.11, (k, alarm_rates)
    assert narrower / REPEATS > 0.9
