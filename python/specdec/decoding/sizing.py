"""Cost-aware sizing of speculation (``size="auto"``): pick the window / draft length / tree size and depth that
maximise expected tokens per second on the device at hand, and run plain AR steps where no size beats them by
more than the measurements' noise.

Three measured inputs, one model:

* **Cost** (:class:`Calibration`): seconds of one feed (attention mask + forward + logits processing) of the target,
  the draft model and the draft head against the tokens fed per row, at the rows a call runs (``copies * batch``),
  with the timings' relative noise. Measured once per machine, model and row count by :func:`calibrate_feed`
  (about a second at batch 1 on a CPU) and cached in ``.cache/specdec/sizing/`` (``SPECDEC_CACHE_DIR`` overrides
  ``.cache``; ``SPECDEC_RECALIBRATE=1`` measures again). Between measured points the cost is interpolated linearly,
  beyond the last one extrapolated along the last segment.
* **Acceptance** (:class:`ChainStats`, :class:`DynamicTreeStats`, :class:`StaticTreeStats`): running statistics of
  what each candidate size accepts. SD's shorter drafts are the first drafts of a longer one with the same
  uniforms, so a draft of ``L'`` accepts ``min(a, L')`` of the ``a`` a longer draft accepted; a subtree (a prefix of
  siblings in trial order, a top-``M'`` of EAGLE-2's candidate pool, fewer expansion rounds) accepts the longest
  prefix of the full tree's accepted path that it contains (recursive rejection tries a node's children in the
  same order). Both rules are exact in distribution. Jacobi windows are not: a draft far into a long window has
  been refined by more target passes than the same position of a short one, so each window length that has run is
  estimated from its own steps (:class:`ChainStats` ``per_width``), and one that has not borrows the nearest run
  length's (truncated from a longer one, an optimistic guess that running it replaces).
* **Step time** (``feedback``, on with a measured calibration): the seconds per step each size measured on the
  method's own calls, less the calibrated feeds, is that size's per-step overhead (verification, the Jacobi
  update, drafting bookkeeping, Python), added to its prediction; sizes that have not run get the run sizes'
  overheads interpolated. AR steps are timed once, on the second call (a *probe*). When measured steps keep
  drifting from the predictions (:data:`DRIFT_TOLERANCE`, :data:`DRIFT_CALLS` calls in a row) the curves are
  measured again.

The size of a call maximises ``(1 + E[accepted]) / E[seconds per step]`` over the method's candidates, with ties to
the smaller size, among the sizes that beat the no-draft size (AR steps, the first candidate) by more than the
margin (:data:`MIN_MARGIN`, or twice the calibration's relative noise where that is larger) both on the calibrated
feeds alone and with the measured overheads; with none, the call runs AR steps (:func:`decide`). It is chosen once
per :func:`~specdec.decoding.generate` call (in ``Method.begin``) and held for the whole call: the tokens of a call
are those of the fixed-size method at the chosen size, so exact methods stay exact and a run is reproducible from
its seed and the sizes chosen (``metrics.sizing`` reports each call's size, with its predicted and measured speed).
The first call of a method runs its exploration size (the papers' setting or larger) to collect statistics. Given
a calibration, the same sequence of calls and no timing feedback (a synthetic calibration), the chosen sizes are
deterministic.
"""

import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

#: Tokens per row at which feeds are timed (interpolated between).
CALIBRATION_TOKENS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
#: Version of :func:`calibrate_feed`'s measurement, part of the cache file's name: curves cached by an older
#: measurement (version 1: each point's reps in a row, clamped down to later points) are measured again.
CALIBRATION_VERSION = 2


# -- cost ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostCurve:
    """Seconds of one feed against tokens fed per row: measured points, piecewise-linear in between."""

    tokens: Tuple[int, ...]
    seconds: Tuple[float, ...]
    #: Relative timing noise of the measurement (median over the points of each point's interquartile half-range
    #: over its median); 0 for synthetic curves and for caches written before it was recorded.
    noise: float = 0.0

    def __post_init__(self):
        if len(self.tokens) != len(self.seconds) or not self.tokens:
            raise ValueError("tokens and seconds must be non-empty and of equal length")
        if list(self.tokens) != sorted(set(self.tokens)):
            raise ValueError(f"tokens must be strictly increasing, got {self.tokens}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    def __call__(self, tokens: float) -> float:
        xs, ys = self.tokens, self.seconds
        if len(xs) == 1:
            return ys[0] * max(tokens, 1) / xs[0]
        if tokens <= xs[0]:
            return ys[0]
        for i in range(1, len(xs)):
            if tokens <= xs[i] or i == len(xs) - 1:
                x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
                return max(0.0, y0 + (y1 - y0) * (tokens - x0) / (x1 - x0))
        raise AssertionError  # unreachable

    def to_json(self) -> Dict:
        return {"tokens": list(self.tokens), "seconds": list(self.seconds), "noise": self.noise}

    @classmethod
    def from_json(cls, d: Dict) -> "CostCurve":
        return cls(tuple(int(t) for t in d["tokens"]), tuple(float(s) for s in d["seconds"]),
                   float(d.get("noise", 0.0)))


@dataclass
class Calibration:
    """Cost curves by role (``"target"``, ``"draft"``, ``"head"``) and rows (``copies * batch``).

    Build one from measured or synthetic curves (tests), or get the cached / measured one for a model with
    :meth:`for_models`.
    """

    curves: Dict[Tuple[str, int], CostCurve] = field(default_factory=dict)
    source: str = "synthetic"

    def cost(self, role: str, rows: int, tokens: float) -> float:
        """Seconds of one feed of ``tokens`` per row over ``rows`` rows by ``role``."""
        curve = self.curves.get((role, rows))
        if curve is None:
            raise KeyError(f"no {role!r} cost curve for {rows} rows (calibrated: {sorted(self.curves)})")
        return curve(tokens)

    def has(self, role: str, rows: int) -> bool:
        return (role, rows) in self.curves

    def noise(self, roles, rows: int) -> float:
        """The largest relative timing noise of the curves of ``roles`` at ``rows`` rows."""
        return max((self.curves[(r, rows)].noise for r in roles if (r, rows) in self.curves), default=0.0)

    @classmethod
    def for_models(cls, models: Dict[str, object], rows: int, device, *, sampling=None,
                   cache_dir: Optional[Path] = None, previous: Optional["Calibration"] = None,
                   force: bool = False) -> "Calibration":
        """Curves for every ``role -> model`` at ``rows`` rows: from ``previous``, else the per-machine cache file
        of each model, else measured now (and cached). ``force``: measure now (and overwrite the cache) even
        where a curve is known: what :class:`AutoSizer` does when measured steps drift from the model."""
        calib = previous if previous is not None else cls(source="measured")
        for role, model in models.items():
            if model is None or (calib.has(role, rows) and not force):
                continue
            path = _cache_path(model, device, cache_dir)
            stored = json.loads(path.read_text()) if path.exists() else {}
            key = str(rows)
            fresh = force or (os.environ.get("SPECDEC_RECALIBRATE") and (path, key) not in _MEASURED_IN_THIS_PROCESS)
            if key not in stored or fresh:
                _MEASURED_IN_THIS_PROCESS.add((path, key))
                stored[key] = calibrate_feed(model, rows, device, head=(role == "head"), sampling=sampling).to_json()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(stored, indent=1))
                tmp.replace(path)
            calib.curves[(role, rows)] = CostCurve.from_json(stored[key])
        return calib


#: (cache file, rows) measured by this process: ``SPECDEC_RECALIBRATE=1`` re-measures each once per process.
_MEASURED_IN_THIS_PROCESS = set()


def machine_key(device) -> str:
    """Where costs were measured: the accelerator's name, or the CPU model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu-{cpu}-{os.cpu_count()}cores-{torch.get_num_threads()}threads"


def model_key(model) -> str:
    """A fingerprint of a model's architecture and weights (class, parameter shapes, dtypes and sums)."""
    h = hashlib.sha1(type(model).__name__.encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(p.shape)}{p.dtype}{float(p.double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def _cache_path(model, device, cache_dir: Optional[Path]) -> Path:
    root = Path(cache_dir) if cache_dir is not None else Path(os.environ.get("SPECDEC_CACHE_DIR", ".cache"))
    name = hashlib.sha1(machine_key(device).encode()).hexdigest()[:12] + "-" + model_key(model)
    return root / "specdec" / "sizing" / f"{name}-v{CALIBRATION_VERSION}.json"


#: Timed feeds per point of :func:`calibrate_feed`.
CALIBRATION_REPS = 7


def calibration_seconds(curve: CostCurve, reps: int = CALIBRATION_REPS) -> float:
    """What measuring ``curve`` again takes, from the curve itself: the warm-up feeds (the widest and the
    narrowest, twice) and ``reps`` timed feeds of every point."""
    return 2.0 * (curve.seconds[0] + curve.seconds[-1]) + reps * sum(curve.seconds)


@torch.no_grad()
def calibrate_feed(model, rows: int, device, *, head: bool = False, sampling=None,
                   tokens: Sequence[int] = CALIBRATION_TOKENS, reps: int = CALIBRATION_REPS) -> CostCurve:
    """Time one feed of ``T`` tokens per row over ``rows`` rows (mask + forward + logits processing), the median of
    ``reps`` after a warm-up, for every ``T`` in ``tokens``; a draft head gets zero features. The curve's ``noise``
    is the median over the points of the reps' interquartile half-range relative to their median.

    The first feeds of a process run slow (allocator, thread pool), so the widest and the narrowest feed are run
    twice before anything is timed. The reps run in rounds over all points (a drift of the machine's speed lands
    on every point alike). Since a wider feed never costs less, the curve is made non-decreasing by pooling
    adjacent violators (:func:`_non_decreasing`: a point timed above the next one and that one meet at their
    mean), which keeps timing noise from making a longer window look cheaper than a shorter one without lowering
    a point to its cheaper neighbour's cost."""
    from ..verifier import sampling_probs as process_logits
    from .feed import attention_mask, run_model

    device = torch.device(device)
    num_tokens = int(model.num_tokens)
    num_slots = num_tokens + max(tokens) + 2
    cache = model.new_cache(rows, num_slots)
    dtype = next(model.parameters()).dtype
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    start_pos = num_tokens // 2
    prefix = torch.full((rows,), start_pos, dtype=torch.int64, device=device)
    cfg_scale = sampling.cfg_scale if sampling is not None and sampling.uses_cfg and rows % 2 == 0 else None

    def feed(t: int) -> None:
        positions = (start_pos + torch.arange(t, device=device))[None, :].expand(rows, t)
        ids = torch.zeros(rows, t, dtype=torch.int64, device=device)
        valid = torch.ones(rows, t, dtype=torch.bool, device=device)
        hidden = torch.zeros(rows, t, int(model.hidden_size), dtype=dtype, device=device) if head else None
        mask = attention_mask(positions, valid, prefix, num_slots)
        logits, _ = run_model(model, cache, ids, positions, positions, valid, mask, cfg_copies=1, hidden=hidden)
        if sampling is not None:  # the processing every fed position's logits go through
            process_logits(logits, cfg_scale=cfg_scale, temperature=sampling.temperature, top_k=sampling.top_k,
                           top_p=sampling.top_p)

    for t in (max(tokens), min(tokens)) * 2:
        feed(t)
    # Rounds over every point, not every point's reps in a row: a drift of the machine's speed (frequency, other
    # load) during the calibration then falls on all points alike instead of lifting a few neighbouring ones,
    # which bent the curve and, made non-decreasing, flattened it (two window lengths calibrated as costing the
    # same, the longer one then always looking as cheap as the shorter).
    times = {t: [] for t in tokens}
    for _ in range(reps):
        for t in tokens:
            sync()
            t0 = time.perf_counter()
            feed(t)
            sync()
            times[t].append(time.perf_counter() - t0)
    seconds, spreads = [], []
    for t in tokens:
        ts = sorted(times[t])
        median = ts[len(ts) // 2]
        seconds.append(median)
        spreads.append((ts[(3 * len(ts)) // 4] - ts[len(ts) // 4]) / (2 * median) if median > 0 else 0.0)
    seconds = _non_decreasing(seconds)
    return CostCurve(tuple(int(t) for t in tokens), tuple(seconds), sorted(spreads)[len(spreads) // 2])


def _non_decreasing(values: Sequence[float]) -> List[float]:
    """The least-squares non-decreasing fit of ``values`` (pool adjacent violators: each run of points that
    decreases is replaced by its mean)."""
    blocks: List[List[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(c)]


# -- acceptance statistics -------------------------------------------------------------------------------------
class ChainStats:
    """Accepted drafts of chain steps, by the window width the step ran: counts of (drafts offered, accepted,
    fully-accepted full window) per width.

    Two estimates of what a window of ``L'`` drafts accepts:

    * **pooled** (``per_width=False``, SD's gamma): every record of every width, ``min(a, L')`` of a record that
      offered at least ``L'`` drafts (a shorter draft is the first ``L'`` drafts of the same draft model with the
      same uniforms, so the truncation is exact in distribution), a geometric extension past a fully accepted
      window, ``a`` otherwise;
    * **per width** (``per_width=True``, Jacobi windows): a width that has run is estimated from its own records
      only. A Jacobi draft far into a long window has been refined by more target passes than the same position
      of a short window, so a long window's records truncated to ``L'`` overstate a short window and a short
      window's records understate a long one. A width that has not run borrows the nearest run width above it
      (truncated, an optimistic guess: choosing it runs it, and its own records then replace the guess) or, with
      none above, the nearest below (extended geometrically).
    """

    def __init__(self, per_width: bool = False):
        self.per_width = per_width
        self._pending: List[Tuple[torch.Tensor, torch.Tensor, int]] = []
        self.by_width: Dict[int, Dict[Tuple[int, int, bool], float]] = {}

    def observe(self, offered: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor, width: int) -> None:
        """One step: ``offered`` / ``accepted`` ``(batch,)`` for the ``active`` rows of a window of ``width``
        drafts. Kept on the device until :meth:`fold` (no host sync in the step)."""
        self._pending.append((torch.where(active, offered, -1), accepted, width))

    def fold(self) -> None:
        for offered, accepted, width in self._pending:
            counts = self.by_width.setdefault(int(width), {})
            n, a = offered.cpu(), accepted.cpu()
            for ni, ai in zip(n.tolist(), a.tolist()):
                if ni < 0:
                    continue
                key = (ni, ai, ni == width and ai == ni)
                counts[key] = counts.get(key, 0.0) + 1.0
        self._pending.clear()

    @property
    def counts(self) -> Dict[Tuple[int, int, bool], float]:
        """Records of every width together."""
        out: Dict[Tuple[int, int, bool], float] = {}
        for counts in self.by_width.values():
            for key, c in counts.items():
                out[key] = out.get(key, 0.0) + c
        return out

    @property
    def num_records(self) -> float:
        return sum(sum(c.values()) for c in self.by_width.values())

    def acceptance_rate(self) -> float:
        """Per-draft acceptance (accepted trials / trials, Beta(1, 1) prior, every width): extends fully accepted
        windows."""
        counts = self.counts
        acc = sum(c * a for (n, a, _), c in counts.items())
        rej = sum(c for (n, a, _), c in counts.items() if a < n)
        return (acc + 1.0) / (acc + rej + 2.0)

    def observed(self, drafts: int) -> bool:
        """Whether a window of ``drafts`` drafts has run (its estimate is its own records')."""
        return sum(self.by_width.get(int(drafts), {}).values()) > 0

    def expected_accepted(self, drafts: int) -> float:
        """Mean accepted drafts per step with a window of ``drafts`` drafts (0 before any record)."""
        if not self.per_width:
            return self._estimate(self.counts, drafts)
        run = sorted(w for w, c in self.by_width.items() if sum(c.values()) > 0)
        if not run:
            return 0.0
        above = [w for w in run if w >= drafts]
        source = above[0] if above else run[-1]
        return self._estimate(self.by_width[source], drafts)

    def _estimate(self, counts: Dict[Tuple[int, int, bool], float], drafts: int) -> float:
        total = sum(counts.values())
        if total == 0:
            return 0.0
        alpha = self.acceptance_rate()
        out = 0.0
        for (n, a, censored), c in counts.items():
            if drafts <= n:
                est = min(a, drafts)
            elif censored:  # the whole window passed: what more drafts would have added, geometrically
                extra = drafts - n
                est = a + (alpha * (1 - alpha**extra) / (1 - alpha) if alpha < 1 else extra)
            else:
                est = a
            out += c * est
        return out / total


class DynamicTreeStats:
    """EAGLE-2 trees. Row b's l-th accepted node (depth l + 1) is in the tree of ``M'`` nodes and ``D'`` expansion
    rounds iff its depth is at most ``D' + 1`` and its rank in the candidate pool of ``D'`` rounds is below
    ``M' - 1``; the accepted length there is the number of such nodes (the tree is ancestor-closed). ``sum`` /
    ``seen`` ``[D', M']`` accumulate that length over the steps that could observe it (trees at least that big)."""

    def __init__(self, max_depth: int, max_nodes: int):
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.sum = torch.zeros(max_depth + 1, max_nodes + 1, dtype=torch.float64)
        self.seen = torch.zeros(max_depth + 1, max_nodes + 1, dtype=torch.float64)
        self._pending: List[Tuple[torch.Tensor, int, int]] = []

    def observe(self, ranks: torch.Tensor, active: torch.Tensor, nodes: int, depth: int) -> None:
        """``ranks`` ``(batch, D + 1, D + 1)``: ``ranks[b, l, d']`` the rank of row b's l-th accepted node in the
        pool of ``d'`` rounds (any value >= ``nodes - 1`` when it is not there) for a tree of ``nodes`` / ``depth``."""
        self._pending.append((ranks[active], nodes, depth))

    def fold(self) -> None:
        for ranks, nodes, depth in self._pending:
            ranks = ranks.cpu().clamp(0, self.max_nodes).long()
            rows = ranks.shape[0]
            for dprime in range(1, min(depth, self.max_depth) + 1):
                hist = torch.bincount(ranks[:, :, dprime].reshape(-1), minlength=self.max_nodes + 1).double()
                below = torch.cat([hist.new_zeros(1), hist.cumsum(0)])  # below[r] = #(rank < r)
                top = min(nodes, self.max_nodes)
                self.sum[dprime, 2 : top + 1] += below[1:top]
                self.seen[dprime, 2 : top + 1] += rows
        self._pending.clear()

    def expected_accepted(self, nodes: int, depth: int) -> float:
        seen = float(self.seen[depth, nodes])
        return float(self.sum[depth, nodes]) / seen if seen else 0.0

    def observed(self, nodes: int, depth: int) -> bool:
        return depth <= self.max_depth and nodes <= self.max_nodes and float(self.seen[depth, nodes]) > 0


class StaticTreeStats:
    """Static trees: how often each node of the explored tree is on the accepted path, over the steps whose tree
    contained it."""

    def __init__(self, num_nodes: int):
        self.hits = torch.zeros(num_nodes, dtype=torch.float64)
        self.seen = torch.zeros(num_nodes, dtype=torch.float64)
        self._pending: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def observe(self, path_ids: torch.Tensor, active: torch.Tensor, tree_ids: torch.Tensor) -> None:
        """``path_ids`` ``(batch, A)``: the accepted nodes as ids of the explored tree (-1 after the path);
        ``tree_ids``: the explored-tree ids of this step's tree nodes."""
        self._pending.append((path_ids[active], tree_ids))

    def fold(self) -> None:
        for path, tree_ids in self._pending:
            path = path.cpu()
            real = path >= 0
            self.hits.index_add_(0, path[real], torch.ones(int(real.sum()), dtype=torch.float64))
            self.seen[tree_ids.cpu()] += path.shape[0]
        self._pending.clear()

    def expected_accepted(self, member: torch.Tensor) -> float:
        """``member``: explored-tree ids of the candidate subtree (ancestor-closed, root excluded)."""
        seen = self.seen[member]
        return float((self.hits[member] / seen.clamp_min(1)).sum())

    def observed(self, member: torch.Tensor) -> bool:
        return bool((self.seen[member] > 0).all())


# -- the sizer -------------------------------------------------------------------------------------------------
#: The least relative margin by which a size must beat AR steps, on top of the calibration's measured noise.
MIN_MARGIN = 0.02
#: A measured step this far (relative) from its prediction, ``DRIFT_CALLS`` calls in a row, triggers a
#: re-calibration (at most once every ``RECALIBRATION_COOLDOWN`` measured calls).
DRIFT_TOLERANCE = 0.25
DRIFT_CALLS = 3
RECALIBRATION_COOLDOWN = 10
#: A re-calibration runs only once the calls since the last one took this many times what measuring the curves
#: again takes (:func:`calibration_seconds`): re-calibrating then costs at most 1 / this of the run's time (a
#: method settled on AR steps that drifted every few calls lost 10 % to re-calibrations at 2 threads).
RECALIBRATION_PAYBACK = 20.0
#: Calls a size must have run for its own measured overhead (their median: one slowed call among three is
#: outvoted) to be taken as it is (see :meth:`AutoSizer._overhead`).
TRUSTED_CALLS = 3
#: Decided calls over which :meth:`AutoSizer.settled` takes the most frequent size.
SETTLED_CALLS = 10


@dataclass
class Choice:
    """A candidate size and what the sizer predicts for it: tokens per step (per row), seconds per step of the
    calibrated feeds (``model_seconds_per_step``) and with the per-step overhead measured on this machine's calls
    (``seconds_per_step``; the same without measurements). ``reason``: ``"explore"``, ``"probe"`` (AR steps timed
    once so that AR's own overhead is known), ``"fastest"``, or ``"ar"`` (no size beat AR by ``margin``)."""

    size: object
    tokens_per_step: float
    seconds_per_step: float
    model_seconds_per_step: float = float("nan")
    reason: str = "fastest"
    margin: float = 0.0
    ar_tokens_per_second: float = float("nan")
    measured: bool = False  # whether this size's per-step overhead is its own (it has run), not borrowed

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.seconds_per_step if self.seconds_per_step > 0 else 0.0

    @property
    def model_tokens_per_second(self) -> float:
        s = self.model_seconds_per_step
        return self.tokens_per_step / s if s > 0 else 0.0


def best(choices: Sequence[Choice]) -> Choice:
    """The candidate with the most expected tokens per second; ties go to the earlier (smaller) candidate."""
    top = choices[0]
    for c in choices[1:]:
        if c.tokens_per_second > top.tokens_per_second * (1 + 1e-9):
            top = c
    return top


def decide(choices: Sequence[Choice], margin: float) -> Choice:
    """The size to run. ``choices[0]`` is the no-draft size (AR steps). A drafting size is eligible when it beats
    AR by more than ``margin`` (relative) both on the calibrated feeds alone and with the measured overheads; the
    fastest eligible one wins (ties to the smaller), and AR steps run when none is eligible. A size that has not
    run (its overhead borrowed) displaces the fastest size that has only when it is faster by more than
    ``margin`` too, so that timing noise does not send the sizer from one untried size to the next."""
    ar = choices[0]
    eligible = [c for c in choices[1:]
                if c.model_tokens_per_second > ar.model_tokens_per_second * (1 + margin)
                and c.tokens_per_second > ar.tokens_per_second * (1 + margin)]
    top = best(eligible) if eligible else ar
    tried = [c for c in eligible if c.measured]
    if eligible and not top.measured and tried:
        incumbent = best(tried)
        if top.tokens_per_second <= incumbent.tokens_per_second * (1 + margin):
            top = incumbent
    return replace(top, reason="fastest" if eligible else "ar", margin=margin,
                   ar_tokens_per_second=ar.tokens_per_second)


def _median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count): robust to a call slowed by other work."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _key(size):
    return tuple(size) if isinstance(size, (list, tuple)) else size


class AutoSizer:
    """Chooses a method's size at the start of every call (``method.begin``), from a :class:`Calibration`, the
    method's running acceptance statistics and, with ``feedback``, the step times measured on its own calls.

    ``calibration=None`` measures (or loads the cached one) for the call's models and rows; ``explore`` overrides
    the method's exploration size. ``feedback`` (default: on for a measured calibration, off for a synthetic one):
    after every call but the first (a process's first call runs cold), the measured seconds per step of the size
    it ran, less the calibrated feeds' prediction, is that size's per-step overhead (verification, drafting
    bookkeeping, Python), which the model adds to the size's prediction; a size not run yet gets the overheads of
    the run sizes around it, interpolated in calibrated step time (:meth:`_overhead`). The second call runs
    AR steps once (a probe) so that AR's own overhead is measured. When a size's measured step drifts from its
    prediction by more than :data:`DRIFT_TOLERANCE`, the same way, for :data:`DRIFT_CALLS` calls in a row, the cost
    curves are measured again and the overheads forgotten. ``clock``: the timer of the calls (tests pass a fake one)."""

    def __init__(self, calibration: Optional[Calibration] = None, *, cache_dir: Optional[Path] = None,
                 explore=None, feedback: Optional[bool] = None, clock=time.perf_counter):
        self.calibration = calibration
        self.cache_dir = cache_dir
        self.explore = explore
        self.feedback = feedback
        self.clock = clock
        self.stats = None
        self.history: List[Choice] = []  # one per call
        self.recalibrations = 0
        self._choices: Dict[int, Choice] = {}  # rows -> choice, valid while nothing new was observed
        self._model: Dict[int, list] = {}  # rows -> (size, tokens per step, calibrated seconds) per candidate
        #: (rows, size) -> the measured per-step overhead of each call that ran the size
        self._overheads: Dict[Tuple[int, object], List[float]] = {}
        self._current = None  # (choice, rows, roles, start time) of the call in flight
        self._drift_calls = 0  # calls in a row whose measured step was off the prediction the same way
        self._drift_direction = 0
        self._since_recalibration = 0
        self._seconds_since_calibration = 0.0  # seconds of the calls measured since the curves were last measured
        self._recalibrate = False

    def choose(self, method, model, batch_size: int, sampling, device) -> object:
        copies = 2 if sampling.uses_cfg else 1
        rows = copies * batch_size
        roles = method.cost_roles(model)
        if self.calibration is None or not all(self.calibration.has(r, rows) for r, m in roles.items() if m is not None):
            self.calibration = Calibration.for_models(roles, rows, device, sampling=sampling,
                                                      cache_dir=self.cache_dir, previous=self.calibration)
        if self.feedback is None:
            self.feedback = self.calibration.source != "synthetic"
        if self._recalibrate:
            self._recalibrate = False
            self.recalibrations += 1
            self.calibration = Calibration.for_models(roles, rows, device, sampling=sampling, cache_dir=self.cache_dir,
                                                      previous=self.calibration, force=True)
            self._overheads = {k: v for k, v in self._overheads.items() if k[0] != rows}
            self._seconds_since_calibration = 0.0
            self._choices.clear()
            self._model.clear()
        if self.stats is None:
            explore = self.explore if self.explore is not None else method.explore_size()
            self.stats = method.new_size_stats(explore)
            choice = Choice(explore, float("nan"), float("nan"), reason="explore")
        else:
            # The choice is a function of the statistics, the calibration, the measured overheads and the rows:
            # evaluating every candidate (hundreds for a tree) is skipped while nothing was observed since (a method
            # that settled on no drafts observes nothing, so its calls stay as cheap as AR's).
            if self.stats._pending:
                self._choices.clear()
                self._model.clear()
            self.stats.fold()
            choice = self._choices.get(rows)
            if choice is None:
                model = self._model.get(rows)
                if model is None:  # the statistics' and the curves' part, kept while neither changes
                    model = self._model[rows] = [(size, 1.0 + method.expected_accepted(self.stats, size),
                                                  method.step_seconds(self.calibration, rows, size, self.stats))
                                                 for size in method.size_candidates(self.stats)]
                ar_size, _, ar_seconds = model[0]
                if self.feedback and (rows, _key(ar_size)) not in self._overheads:
                    choice = Choice(ar_size, 1.0, ar_seconds, ar_seconds, reason="probe")
                else:
                    choice = self._choices[rows] = self._decide(rows, roles, model)
        self.history.append(choice)
        self._current = (choice, rows, roles, self.clock())
        return choice.size

    def settled(self, calls: int = SETTLED_CALLS):
        """The size this sizer settled on: the most frequent among its last ``calls`` decided calls (explore and
        probe calls left out; ties to the latest), None before any."""
        decided = [c.size for c in self.history if c.reason in ("fastest", "ar")][-calls:]
        if not decided:
            return None
        counts: Dict[object, int] = {}
        for size in decided:
            counts[_key(size)] = counts.get(_key(size), 0) + 1
        top = max(counts.values())
        return next(size for size in reversed(decided) if counts[_key(size)] == top)

    def _decide(self, rows: int, roles, model) -> Choice:
        """:func:`decide` over ``model``'s candidates ``(size, tokens per step, calibrated seconds per step)``
        (the no-draft size first), each with its measured (or borrowed) per-step overhead."""
        # The noise is an interquartile half-range (about 0.67 sigma of one timing); a ratio of two timings has
        # sqrt(2) sigma: twice the noise is about that.
        margin = max(MIN_MARGIN, 2.0 * self.calibration.noise([r for r, m in roles.items() if m is not None], rows))
        # The points overheads are interpolated between: the no-draft size and the sizes run on enough calls to be
        # trusted (every run size while no drafting size is), each at the median over its calls.
        measured = [(_key(size), seconds, self._overheads.get((rows, _key(size)))) for size, _, seconds in model]
        measured = [(k, seconds, o) for k, seconds, o in measured if o is not None]
        trusted = [(k, seconds, _median(o)) for i, (k, seconds, o) in enumerate(measured)
                   if len(o) >= TRUSTED_CALLS or k == _key(model[0][0])]
        if len(trusted) < 2:
            trusted = [(k, seconds, _median(o)) for k, seconds, o in measured]
        choices = []
        for size, tokens, seconds in model:
            overhead = self._overhead(rows, size, seconds, trusted)
            own = (rows, _key(size)) in self._overheads
            choices.append(Choice(size, tokens, seconds + overhead, seconds, measured=own))
        return decide(choices, margin)

    def _overhead(self, rows: int, size, seconds: float, points) -> float:
        """The size's own measured overhead (the median over its calls), else interpolated linearly in calibrated
        step seconds between the ``points`` ``(size key, calibrated seconds, overhead)`` around it (the nearest
        one's beyond them; 0 before any has run).

        A size measured on fewer than :data:`TRUSTED_CALLS` calls gets the smaller of its own and the interpolated
        overhead: one call slowed by something else on the machine (a 10-30 % slower call is common on a shared
        CPU) would otherwise price the size, and through the interpolation every size past it, out for good; an
        optimistic guess is corrected the next time the size runs."""
        own = self._overheads.get((rows, _key(size)))
        if own is not None and len(own) >= TRUSTED_CALLS:
            return _median(own)
        others = [(x, y) for k, x, y in points if k != _key(size)]
        if own is None:
            return self._interpolate(seconds, others)
        return min(_median(own), self._interpolate(seconds, others)) if others else _median(own)

    @staticmethod
    def _interpolate(seconds: float, measured) -> float:
        if not measured:
            return 0.0
        below = [m for m in measured if m[0] <= seconds]
        above = [m for m in measured if m[0] >= seconds]
        if not below or not above:
            return min(measured, key=lambda m: (abs(m[0] - seconds), m[1]))[1]
        (x0, y0), (x1, y1) = max(below, key=lambda m: (m[0], -m[1])), min(above, key=lambda m: (m[0], m[1]))
        return y0 if x1 == x0 else y0 + (y1 - y0) * (seconds - x0) / (x1 - x0)

    def end(self, method, metrics) -> None:
        """Called by :func:`~specdec.decoding.generate` after a call: puts the call's size and its predicted vs
        measured speed into ``metrics.sizing`` and, with feedback, learns the size's per-step overhead and watches
        for drift."""
        from .metrics import SizeReport

        if self._current is None:
            return
        choice, rows, roles, start = self._current
        self._current = None
        seconds = self.clock() - start
        steps = int(metrics.accept_lens.shape[1])  # loop iterations (the prefill excluded)
        # The prefill (a one-token feed) counts as one step: about an AR step, within a few percent of any step
        # over the dozens of steps of a call.
        measured_step = seconds / (steps + 1)
        tokens = float(metrics.tokens_per_step.mean()) if metrics.row_steps.numel() else float("nan")
        metrics.sizing = SizeReport(size=choice.size, label=method.size_label(), reason=choice.reason,
                                    predicted_tokens_per_step=choice.tokens_per_step,
                                    predicted_seconds_per_step=choice.seconds_per_step,
                                    measured_tokens_per_step=tokens, measured_seconds_per_step=measured_step,
                                    margin=choice.margin, ar_tokens_per_second=choice.ar_tokens_per_second)
        if not self.feedback or choice.reason == "explore" or not steps:
            return
        self.observe_step_time(choice, rows, measured_step, call_seconds=seconds, roles=roles)

    def observe_step_time(self, choice: Choice, rows: int, measured_step: float, *,
                          call_seconds: Optional[float] = None, roles=None) -> None:
        """Learn ``choice``'s per-step overhead from one call's measured seconds per step at ``rows`` rows, and
        schedule a re-calibration when measured steps keep drifting from the predictions, as far as the
        re-calibration budget allows (:data:`RECALIBRATION_PAYBACK`; ``call_seconds``: the call's wall time,
        ``roles``: the call's models, whose curves a re-calibration measures; without them, no budget applies)."""
        key = (rows, _key(choice.size))
        predicted = choice.seconds_per_step
        if predicted > 0 and any(k[0] == rows for k in self._overheads):  # a prediction with measured overheads
            # drift: off by more than the tolerance, the same way as the calls before (noise goes both ways)
            direction = (measured_step > predicted) - (measured_step < predicted)
            drifted = abs(measured_step - predicted) > DRIFT_TOLERANCE * predicted
            same_way = self._drift_calls == 0 or direction == self._drift_direction
            self._drift_calls = (self._drift_calls + 1 if same_way else 1) if drifted else 0
            self._drift_direction = direction
        self._overheads.setdefault(key, []).append(measured_step - choice.model_seconds_per_step)
        self._since_recalibration += 1
        self._choices.clear()
        cost = 0.0
        if call_seconds is not None and roles is not None:
            self._seconds_since_calibration += call_seconds
            cost = sum(calibration_seconds(self.calibration.curves[(r, rows)]) for r, m in roles.items()
                       if m is not None and (r, rows) in self.calibration.curves)
        if (self._drift_calls >= DRIFT_CALLS and self._since_recalibration >= RECALIBRATION_COOLDOWN
                and self._seconds_since_calibration >= RECALIBRATION_PAYBACK * cost):
            # (a synthetic calibration is a cost model by fiat: nothing to measure again, the overheads adapt)
            self._recalibrate = self.calibration.source != "synthetic"
            self._drift_calls = self._since_recalibration = 0


@contextmanager
def held_size(method):
    """Within the block, ``method`` runs every call at the size its sizer settled on (:meth:`AutoSizer.settled`;
    kept after the block), without re-choosing or collecting statistics; outside it, auto sizing resumes. Used to
    judge the quality of an auto-sized method at the size its timed run settled on."""
    sizer, method.sizer = method.sizer, None
    settled = sizer.settled() if sizer is not None else None
    if settled is not None:
        method.apply_size(settled)
    try:
        yield method
    finally:
        method.sizer = sizer


def enable_auto_size(method, sizer: Optional[AutoSizer] = None, **kwargs):
    """Turn on ``size="auto"`` for ``method`` (a method with the sizing hooks; AR has nothing to size)."""
    if not hasattr(method, "size_candidates"):
        return method
    method.sizer = sizer if sizer is not None else AutoSizer(**kwargs)
    return method
