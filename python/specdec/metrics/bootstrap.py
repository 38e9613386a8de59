"""Bootstrap intervals for the sample-quality figures, and whether a method's quality differs from AR's.

A judged set is ``N`` generated images in a fixed layout: row ``i`` has class ``labels[i]`` and per-row key
``keys[i]``, the same for every method (balanced classes, keys derived from one seed). Its figures against a fixed
set of held-out images are class accuracy, FD-cls, KID and precision / recall (:mod:`.quality`).

**Resampling.** Every replicate ``b`` draws multiplicities ``w_b`` for the generated rows and ``v_b`` for the real
rows, *stratified by class* (each class's rows are resampled among themselves, so every replicate keeps the
design's class balance, which is fixed, not random) and evaluates every figure with those multiplicities. The
draws are made once per :class:`BootstrapJudge` and reused for every set it judges: replicate ``b`` of AR and
replicate ``b`` of a method resample the *same rows* (row ``i`` of both was generated from the same class and the
same key) and the same real images. The difference of the two figures is then bootstrapped as a difference of
paired rows: what the two sets share (seeds, real images) stays shared, so its variation cancels in the difference
instead of being counted twice. This is the paired bootstrap; resampling the two sets independently would treat
correlated samples as independent and widen the interval of the difference when they are positively correlated
(exact methods coupled to AR through the same uniforms are). Where nothing is shared (AR with other seeds), the
pairing by row index is harmless: independent pairs resampled together are still independent.

**Figures under resampling.** A resampled set holds copies of the same image. The estimators are written with
weights so that copies behave as what they are, not as new images:

* KID: the unbiased MMD^2 U-statistic with multiplicities sums kernel values over pairs of *different original
  rows* only (a copy of a row is not an independent sample from the distribution); with all weights 1 it is the
  usual statistic.
* FD-cls: weighted mean and covariance (denominator ``sum(w) - 1``), then ``Tr((S_r S_g)^1/2)`` as the sum of the
  square roots of the eigenvalues of ``S_r^1/2 S_g S_r^1/2`` (the same number, from a symmetric eigenproblem).
* Precision / recall (k-NN balls, k = 3): a point's radius is the distance to its k-th nearest *other* original row,
  counting multiplicities (two copies of a neighbour count twice, copies of the point itself never); only rows drawn
  at least once lend a ball; shares are weighted by multiplicity.
* Class accuracy: the weighted share of correctly classified rows.

**Intervals** are normal intervals with the bootstrap standard error: ``estimate +- z * sd(replicates)`` (z = 1.96
for 95 %). Not percentile intervals: copies still shift the plug-in figures (a resample of 1,000 rows holds about
632 distinct ones, and FD-cls grows, precision / recall shrink, as the number of distinct rows falls), so the
replicates' *spread* estimates the figure's sampling error but their *location* is off by that shift; the normal
interval uses the spread only. For KID and class accuracy, whose expectation does not depend on the sample size,
the interval is one for the population value; for FD-cls and precision / recall, which do depend on it, it is one
for the figure's expected value at this sample size, hence figures compare only at equal sizes (AR's and every
method's are). A method *differs from AR beyond chance* on a figure when the interval of its paired difference
excludes zero (tests/test_metrics_stats.py checks both the coverage and this rate under the null on toys).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.stats
import torch

from .quality import polynomial_kernel

#: The judged figures, in table order.
FIGURES = ("class_accuracy", "fd_cls", "kid", "precision", "recall")
#: Figures that are distances to the real images (lower is better); the others are shares (higher is better).
LOWER_IS_BETTER = frozenset({"fd_cls", "kid"})
#: Where each figure's value can lie (normal intervals are clipped to it; KID's estimate may be negative).
_RANGE = {"class_accuracy": (0.0, 1.0), "precision": (0.0, 1.0), "recall": (0.0, 1.0), "fd_cls": (0.0, math.inf),
          "kid": (-math.inf, math.inf)}


def stratified_bootstrap_counts(strata: torch.Tensor, num_replicates: int, generator: torch.Generator
                                ) -> torch.Tensor:
    """Multiplicities ``(num_replicates, N)`` float64 of a bootstrap resample of ``N`` rows that draws, for every
    stratum (e.g. class), as many rows as it has, with replacement, among that stratum's rows only."""
    strata = torch.as_tensor(strata).cpu()
    if strata.ndim != 1 or strata.numel() == 0:
        raise ValueError(f"strata must be a non-empty 1-d tensor, got shape {tuple(strata.shape)}")
    if num_replicates < 1:
        raise ValueError(f"num_replicates must be >= 1, got {num_replicates}")
    counts = torch.zeros(num_replicates, strata.numel(), dtype=torch.float64)
    for s in torch.unique(strata):
        rows = (strata == s).nonzero()[:, 0]
        draws = rows[torch.randint(0, len(rows), (num_replicates, len(rows)), generator=generator)]
        counts.scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))
    return counts


def normal_interval(estimate: float, replicates, level: float = 0.95) -> Tuple[float, float]:
    """``estimate +- z * sd(replicates)``, the two-sided normal interval at ``level`` with the bootstrap standard
    error (the spread of ``replicates``, not their location; see the module docstring)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(replicates, dtype=np.float64)
    if r.size < 2:
        raise ValueError(f"replicates needs at least 2 values, got {r.size}")
    half = float(scipy.stats.norm.ppf((1 + level) / 2)) * float(r.std(ddof=1))
    return estimate - half, estimate + half


def weighted_unbiased_kernel_mean(kernel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``kernel[i, j]`` over ordered pairs of *different* rows ``i != j``, rows counted ``weights`` times:
    ``(w K w - sum_i w_i^2 K_ii) / ((sum w)^2 - sum w^2)``. ``kernel`` ``(N, N)``, ``weights`` ``(B, N)`` ->
    ``(B,)``; all-ones weights give the U-statistic term ``sum_{i != j} K_ij / (N (N - 1))``."""
    quad = ((weights @ kernel) * weights).sum(1)
    same_row = (weights * weights) @ kernel.diagonal()
    total = weights.sum(1)
    return (quad - same_row) / (total * total - (weights * weights).sum(1))


def _weighted_moments(x: torch.Tensor, weights: torch.Tensor, rows_per_step: int = 256):
    """Weighted means ``(B, F)`` and covariances ``(B, F, F)`` (denominator ``sum(w) - 1``) of ``x`` ``(N, F)``."""
    total = weights.sum(1)
    center = x.mean(0)  # centred first: the second moments then carry no large common offset
    xc = x - center
    mean = (weights @ xc) / total[:, None]
    feat = x.shape[1]
    second = torch.zeros(weights.shape[0], feat * feat, dtype=x.dtype)
    for i in range(0, len(x), rows_per_step):  # (B, N) @ (N, F*F) over row blocks: bounded memory, one GEMM each
        block = xc[i : i + rows_per_step]
        second += weights[:, i : i + rows_per_step] @ (block[:, :, None] * block[:, None, :]).reshape(len(block), -1)
    second = second.reshape(-1, feat, feat)
    cov = (second - total[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (total - 1)[:, None, None]
    return mean + center, cov


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square roots of PSD matrices ``(B, F, F)`` (negative rounding eigenvalues clamped to 0)."""
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp_min(0).sqrt()[:, None, :]) @ vecs.transpose(1, 2)


def _nearest_others(x: torch.Tensor, depth: int):
    """Distances ``(N, depth)`` and indices of each row's ``depth`` nearest *other* rows of ``x``, nearest first."""
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    dist, idx = d.topk(depth, dim=1, largest=False)
    return dist, idx


def _knn_radii(dist: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Radius ``(B, N)`` of each row's ball: distance to the k-th nearest other row counting multiplicities
    ``weights`` ``(B, N)``. When the nearest ``depth`` rows hold fewer than k drawn copies (vanishingly rare for
    depth >> k), the depth-th distance is used."""
    counts = weights.float()[:, idx].cumsum(-1)  # (B, N, depth) small integers: exact in float32
    first = (counts < k).sum(-1).clamp_max(dist.shape[1] - 1)  # counts never decrease along a row
    return dist.expand(weights.shape[0], -1, -1).gather(2, first[..., None])[..., 0]


def _drawn_radii(radii: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ball radii ``(B, N)`` with ``-inf`` for rows not drawn in a replicate (they lend no ball)."""
    return torch.where(weights > 0, radii, torch.full_like(radii, -math.inf))


def _candidate_pairs(dist: torch.Tensor, radii: torch.Tensor, balls_on_rows: bool):
    """(source, ball, distance) of the pairs of ``dist`` ``(N, M)`` that some replicate's ball could cover: ``dist``
    within the ball row's largest radius over all replicates. Balls are ``dist``'s rows when ``balls_on_rows`` (the
    sources are then its columns), else its columns."""
    reach = radii.max(0).values
    near = dist <= (reach[:, None] if balls_on_rows else reach[None, :])
    rows, cols = near.nonzero(as_tuple=True)
    return (cols, rows, dist[rows, cols]) if balls_on_rows else (rows, cols, dist[rows, cols])


def _covered_share(pairs, radii: torch.Tensor, src_weights: torch.Tensor) -> torch.Tensor:
    """Weighted share ``(B,)`` of source rows inside at least one ball: a candidate pair (source, ball, distance)
    covers its source in replicate b when the distance is within ``radii[b, ball]`` (``-inf`` if not drawn)."""
    src, ball, dist = pairs
    covered = (dist[None, :] <= radii[:, ball]).float()
    hits = torch.zeros(src_weights.shape, dtype=torch.float32).index_add_(1, src, covered)
    return ((hits > 0).double() * src_weights).sum(1) / src_weights.sum(1)


@dataclass
class Judged:
    """Figures of one generated set: point estimates (all rows, weight 1) and two sets of replicates, aligned with
    every other set judged by the same :class:`BootstrapJudge` (replicate b resamples the same rows in all of them):
    ``replicates`` resample the generated and the real rows (the figure's own interval), ``paired_replicates`` the
    generated rows only (differences between sets; see :meth:`difference`)."""

    point: Dict[str, float]
    replicates: Dict[str, np.ndarray] = field(repr=False)
    paired_replicates: Dict[str, np.ndarray] = field(repr=False)
    level: float = 0.95

    def interval(self, figure: str) -> Tuple[float, float]:
        """The figure's interval, clipped to the values the figure can take."""
        lo, hi = normal_interval(self.point[figure], self.replicates[figure], self.level)
        floor, ceiling = _RANGE[figure]
        return max(lo, floor), min(hi, ceiling)

    def difference(self, reference: "Judged") -> Dict[str, Dict[str, float]]:
        """Paired differences ``self - reference`` per figure: ``{"diff", "lo", "hi", "beyond_chance"}``.

        Both sets are compared with the same real images, which are held fixed here: the question is whether the
        two generated distributions differ in their distance to that reference, and the reference's own sampling
        error moves both figures together (resampling it as well overstated the spread of the difference by 15-50 %
        on the toys of tests/test_metrics_stats.py, making the verdict blind rather than cautious)."""
        out = {}
        for f in FIGURES:
            diff = self.point[f] - reference.point[f]
            lo, hi = normal_interval(diff, self.paired_replicates[f] - reference.paired_replicates[f], self.level)
            out[f] = {"diff": diff, "lo": lo, "hi": hi, "beyond_chance": bool(lo > 0 or hi < 0)}
        return out


@dataclass
class _RealState:
    """What the figures need from the real rows under multiplicities ``weights`` ``(B + 1, M)`` or ``(1, M)``."""

    weights: torch.Tensor
    kernel_term: torch.Tensor  # (B + 1,) within-real term of the unbiased MMD^2
    radii: torch.Tensor  # (B + 1, M) precision / recall balls (-inf: not drawn)
    mean: torch.Tensor  # (B + 1, F)
    trace: torch.Tensor  # (B + 1,) trace of the covariance
    cov_sqrt: torch.Tensor  # (B + 1, F, F)


class BootstrapJudge:
    """Class accuracy, FD-cls, KID and precision / recall of generated feature sets against fixed real features,
    each with bootstrap replicates drawn once for all sets (see the module docstring).

    Parameters
    ----------
    real_features : ``(M, F)`` classifier features of the held-out images.
    real_labels : ``(M,)`` their classes (strata of the real resample).
    gen_labels : ``(N,)`` classes of the generated rows (strata of the generated resample); every judged set has
        this layout.
    num_replicates : bootstrap replicates B (a standard error needs far fewer than a percentile's tails; 200 gives
        it to about 5 %).
    seed : seeds the resampling (figures are reproducible).
    k : neighbours of the precision / recall balls.
    level : interval level.
    chunk : replicates evaluated at once (bounds memory).
    """

    def __init__(self, real_features, real_labels, gen_labels, *, num_replicates: int = 200, seed: int = 0,
                 k: int = 3, level: float = 0.95, chunk: int = 50):
        self.real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
        self.gen_labels = torch.as_tensor(gen_labels).cpu()
        real_labels = torch.as_tensor(real_labels).cpu()
        if self.real.ndim != 2 or len(real_labels) != len(self.real):
            raise ValueError(f"real_features must be (M, F) with M == len(real_labels); got "
                             f"{tuple(self.real.shape)} and {len(real_labels)}")
        if min(len(self.real), len(self.gen_labels)) <= k + 1:
            raise ValueError(f"need more than k + 1 = {k + 1} real and generated rows")
        self.k, self.level, self.chunk = int(k), float(level), int(chunk)
        self.depth = min(8 * self.k, len(self.real) - 1, len(self.gen_labels) - 1)
        gen = torch.Generator().manual_seed(int(seed))
        # Weight 1 everywhere first: the point estimate is replicate 0 of every evaluation.
        self.gen_weights = torch.cat([torch.ones(1, len(self.gen_labels), dtype=torch.float64),
                                      stratified_bootstrap_counts(self.gen_labels, num_replicates, gen)])
        self.real_weights = torch.cat([torch.ones(1, len(self.real), dtype=torch.float64),
                                       stratified_bootstrap_counts(real_labels, num_replicates, gen)])
        self._real_kernel = polynomial_kernel(self.real, self.real)
        self._real_nn = _nearest_others(self.real, self.depth)
        self._resampled = self._real_state(self.real_weights)
        self._fixed = self._real_state(self.real_weights[:1])

    @property
    def num_replicates(self) -> int:
        return self.gen_weights.shape[0] - 1

    def _slices(self, total: int):
        return [slice(i, min(i + self.chunk, total)) for i in range(0, total, self.chunk)]

    def _chunked(self, fn, total: int) -> torch.Tensor:
        return torch.cat([fn(s) for s in self._slices(total)])

    def _real_state(self, weights: torch.Tensor) -> _RealState:
        radii = self._chunked(lambda s: _knn_radii(*self._real_nn, weights[s], self.k), len(weights))
        mean, cov = _weighted_moments(self.real, weights)
        return _RealState(weights, weighted_unbiased_kernel_mean(self._real_kernel, weights),
                          _drawn_radii(radii, weights), mean, cov.diagonal(dim1=1, dim2=2).sum(-1), _psd_sqrt(cov))

    def judge(self, features, correct) -> Judged:
        """Figures of one generated set: ``features`` ``(N, F)`` in the judge's row layout and ``correct`` ``(N,)``
        (1 where the classifier's argmax is the row's class)."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        correct = torch.as_tensor(np.asarray(correct), dtype=torch.float64)
        if x.shape != (len(self.gen_labels), self.real.shape[1]) or correct.shape != (len(self.gen_labels),):
            raise ValueError(f"features must be ({len(self.gen_labels)}, {self.real.shape[1]}) and correct "
                             f"({len(self.gen_labels)},); got {tuple(x.shape)} and {tuple(correct.shape)}")
        w = self.gen_weights
        total = len(w)
        gen_nn = _nearest_others(x, self.depth)
        generated = {
            "accuracy": (w @ correct) / w.sum(1),
            "kernel_term": weighted_unbiased_kernel_mean(polynomial_kernel(x, x), w),
            "cross": w @ polynomial_kernel(x, self.real),  # (B + 1, M), real weights applied per state
            "moments": _weighted_moments(x, w),
            "radii": _drawn_radii(self._chunked(lambda s: _knn_radii(*gen_nn, w[s], self.k), total), w),
            "dist": torch.cdist(x, self.real),  # (N, M)
        }
        figures = {name: self._figures(generated, state) for name, state in (("joint", self._resampled),
                                                                              ("paired", self._fixed))}
        joint = {f: figures["joint"][f].numpy() for f in FIGURES}
        paired = {f: figures["paired"][f].numpy()[1:] for f in FIGURES}
        return Judged({f: float(r[0]) for f, r in joint.items()}, {f: r[1:] for f, r in joint.items()}, paired,
                      self.level)

    def _figures(self, generated: Dict, real: _RealState) -> Dict[str, torch.Tensor]:
        """Every figure ``(B + 1,)`` from the generated rows' resampled parts and one state of the real rows."""
        w, v = self.gen_weights, real.weights
        total = len(w)
        mean, cov = generated["moments"]
        root_trace = torch.linalg.eigvalsh(real.cov_sqrt @ cov @ real.cov_sqrt).clamp_min(0).sqrt().sum(-1)
        to_real = _candidate_pairs(generated["dist"], real.radii, balls_on_rows=False)  # generated in real balls
        to_gen = _candidate_pairs(generated["dist"], generated["radii"], balls_on_rows=True)  # real in generated
        real_radii = real.radii.expand(total, -1)
        real_weights = v.expand(total, -1)
        return {
            "class_accuracy": generated["accuracy"],
            "kid": generated["kernel_term"] + real.kernel_term
            - 2 * (generated["cross"] * v).sum(1) / (w.sum(1) * v.sum(1)),
            "fd_cls": ((mean - real.mean) ** 2).sum(-1) + cov.diagonal(dim1=1, dim2=2).sum(-1) + real.trace
            - 2 * root_trace,
            "precision": self._chunked(lambda s: _covered_share(to_real, real_radii[s], w[s]), total),
            "recall": self._chunked(lambda s: _covered_share(to_gen, generated["radii"][s], real_weights[s]), total),
        }


def verdict(diff: Dict[str, Dict[str, float]], primary: str = "kid") -> str:
    """One word for a method's quality against AR from its paired differences: ``worse`` / ``better`` when the
    ``primary`` figure's interval excludes zero (by that figure's direction), else ``within chance``."""
    d = diff[primary]
    if not d["beyond_chance"]:
        return "within chance"
    worse = d["diff"] > 0 if primary in LOWER_IS_BETTER else d["diff"] < 0
    return "worse" if worse else "better"


def beyond_chance_summary(diff: Dict[str, Dict[str, float]]) -> str:
    """The figures whose paired difference excludes zero, each with the direction of the change in quality
    (``-`` worse, ``+`` better), e.g. ``"kid-, recall-"``; ``"none"`` when there is none."""
    names = {"class_accuracy": "acc", "fd_cls": "FD", "kid": "KID", "precision": "prec", "recall": "rec"}
    parts = []
    for f in FIGURES:
        d = diff[f]
        if d["beyond_chance"]:
            worse = d["diff"] > 0 if f in LOWER_IS_BETTER else d["diff"] < 0
            parts.append(names[f] + ("-" if worse else "+"))
    return ", ".join(parts) if parts else "none"


def judge_table_fields(judged: Judged, reference: Optional[Judged]) -> Dict[str, object]:
    """Flat row fields of one judged set: ``<figure>``, ``<figure>_lo`` / ``_hi`` and, against ``reference``,
    ``<figure>_diff`` with ``_diff_lo`` / ``_diff_hi``, ``verdict`` and ``beyond_chance``."""
    row: Dict[str, object] = {}
    for f in FIGURES:
        lo, hi = judged.interval(f)
        row.update({f: judged.point[f], f"{f}_lo": lo, f"{f}_hi": hi})
    if reference is not None:
        diff = judged.difference(reference)
        for f in FIGURES:
            row.update({f"{f}_diff": diff[f]["diff"], f"{f}_diff_lo": diff[f]["lo"], f"{f}_diff_hi": diff[f]["hi"]})
        row["verdict"] = verdict(diff)
        row["beyond_chance"] = beyond_chance_summary(diff)
    return row
