"""Cost-aware sizing of speculation (``size="auto"``): pick the window / draft length / tree size and depth that
maximise expected tokens per second on the device at hand.

Two measured inputs, one model:

* **Cost** (:class:`Calibration`): seconds of one feed (attention mask + forward + logits processing) of the target,
  the draft model and the draft head against the tokens fed per row, at the rows a call runs (``copies * batch``).
  Measured once per machine, model and row count by :func:`calibrate` (about a second at batch 1 on a CPU) and
  cached in ``.cache/specdec/sizing/`` (``SPECDEC_CACHE_DIR`` overrides ``.cache``; ``SPECDEC_RECALIBRATE=1``
  measures again, e.g. after a calibration taken while the machine was busy). Between measured points the
  cost is interpolated linearly, beyond the last one extrapolated along the last segment.
* **Acceptance** (:class:`ChainStats`, :class:`DynamicTreeStats`, :class:`StaticTreeStats`): running statistics of
  what every *smaller* configuration would have accepted on the steps actually taken. A chain of ``L'`` drafts
  accepts ``min(a, L')`` of the drafts a longer chain accepted ``a`` of (same drafts, same uniforms); a subtree
  (a prefix of siblings in trial order, a top-``M'`` of EAGLE-2's candidate pool, fewer expansion rounds) accepts
  the longest prefix of the full tree's accepted path that it contains (recursive rejection tries a node's
  children in the same order). Chains longer than any run extend a fully accepted window geometrically with the
  pooled per-draft acceptance rate.

The size of a call maximises ``(1 + E[accepted]) / E[seconds per step]`` over the method's candidates, with ties to
the smaller size. It is chosen once per :func:`~specdec.decoding.generate` call (in ``Method.begin``) and held for
the whole call: the tokens of a call are those of the fixed-size method at the chosen size, so exact methods stay
exact and a run is reproducible from its seed and the sizes chosen. The first call of a method runs its exploration
size (the papers' setting or larger) to collect statistics for every smaller candidate. Given a calibration and the
same sequence of calls, the chosen sizes are deterministic.
"""

import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

#: Tokens per row at which feeds are timed (interpolated between).
CALIBRATION_TOKENS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


# -- cost ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostCurve:
    """Seconds of one feed against tokens fed per row: measured points, piecewise-linear in between."""

    tokens: Tuple[int, ...]
    seconds: Tuple[float, ...]

    def __post_init__(self):
        if len(self.tokens) != len(self.seconds) or not self.tokens:
            raise ValueError("tokens and seconds must be non-empty and of equal length")
        if list(self.tokens) != sorted(set(self.tokens)):
            raise ValueError(f"tokens must be strictly increasing, got {self.tokens}")

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
        return {"tokens": list(self.tokens), "seconds": list(self.seconds)}

    @classmethod
    def from_json(cls, d: Dict) -> "CostCurve":
        return cls(tuple(int(t) for t in d["tokens"]), tuple(float(s) for s in d["seconds"]))


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

    @classmethod
    def for_models(cls, models: Dict[str, object], rows: int, device, *, sampling=None,
                   cache_dir: Optional[Path] = None, previous: Optional["Calibration"] = None) -> "Calibration":
        """Curves for every ``role -> model`` at ``rows`` rows: from ``previous``, else the per-machine cache file
        of each model, else measured now (and cached)."""
        calib = previous if previous is not None else cls(source="measured")
        for role, model in models.items():
            if model is None or calib.has(role, rows):
                continue
            path = _cache_path(model, device, cache_dir)
            stored = json.loads(path.read_text()) if path.exists() else {}
            key = str(rows)
            fresh = os.environ.get("SPECDEC_RECALIBRATE") and (path, key) not in _MEASURED_IN_THIS_PROCESS
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
    return root / "specdec" / "sizing" / f"{name}.json"


@torch.no_grad()
def calibrate_feed(model, rows: int, device, *, head: bool = False, sampling=None,
                   tokens: Sequence[int] = CALIBRATION_TOKENS, reps: int = 5) -> CostCurve:
    """Time one feed of ``T`` tokens per row over ``rows`` rows (mask + forward + logits processing), the median of
    ``reps`` after a warm-up, for every ``T`` in ``tokens``; a draft head gets zero features.

    The first feeds of a process run slow (allocator, thread pool), so the widest and the narrowest feed are run
    twice before anything is timed; and since a wider feed never costs less, the curve is made non-decreasing
    (each point is at most every later one), which keeps timing noise from making a longer window look cheaper
    than a shorter one."""
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
    seconds = []
    for t in tokens:
        feed(t)
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            feed(t)
            sync()
            times.append(time.perf_counter() - t0)
        seconds.append(sorted(times)[len(times) // 2])
    for i in range(len(seconds) - 2, -1, -1):
        seconds[i] = min(seconds[i], seconds[i + 1])
    return CostCurve(tuple(int(t) for t in tokens), tuple(seconds))


# -- acceptance statistics -------------------------------------------------------------------------------------
class ChainStats:
    """Accepted drafts of chain steps: counts of (drafts offered, accepted, fully-accepted full window)."""

    def __init__(self):
        self._pending: List[Tuple[torch.Tensor, torch.Tensor, int]] = []
        self.counts: Dict[Tuple[int, int, bool], float] = {}

    def observe(self, offered: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor, width: int) -> None:
        """One step: ``offered`` / ``accepted`` ``(batch,)`` for the ``active`` rows of a window of ``width``
        drafts. Kept on the device until :meth:`fold` (no host sync in the step)."""
        self._pending.append((torch.where(active, offered, -1), accepted, width))

    def fold(self) -> None:
        for offered, accepted, width in self._pending:
            n, a = offered.cpu(), accepted.cpu()
            for ni, ai in zip(n.tolist(), a.tolist()):
                if ni < 0:
                    continue
                key = (ni, ai, ni == width and ai == ni)
                self.counts[key] = self.counts.get(key, 0.0) + 1.0
        self._pending.clear()

    @property
    def num_records(self) -> float:
        return sum(self.counts.values())

    def acceptance_rate(self) -> float:
        """Per-draft acceptance (accepted trials / trials, Beta(1, 1) prior): extends fully accepted windows."""
        acc = sum(c * a for (n, a, _), c in self.counts.items())
        rej = sum(c for (n, a, _), c in self.counts.items() if a < n)
        return (acc + 1.0) / (acc + rej + 2.0)

    def expected_accepted(self, drafts: int) -> float:
        """Mean accepted drafts per step with a window of ``drafts`` drafts."""
        total = self.num_records
        if total == 0:
            return 0.0
        alpha = self.acceptance_rate()
        out = 0.0
        for (n, a, censored), c in self.counts.items():
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
@dataclass
class Choice:
    size: object
    tokens_per_step: float
    seconds_per_step: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.seconds_per_step if self.seconds_per_step > 0 else 0.0


def best(choices: Sequence[Choice]) -> Choice:
    """The candidate with the most expected tokens per second; ties go to the earlier (smaller) candidate."""
    top = choices[0]
    for c in choices[1:]:
        if c.tokens_per_second > top.tokens_per_second * (1 + 1e-9):
            top = c
    return top


class AutoSizer:
    """Chooses a method's size at the start of every call (``method.begin``), from a :class:`Calibration` and
    the method's running acceptance statistics. ``calibration=None`` measures (or loads the cached one) for the
    call's models and rows; ``explore`` overrides the method's exploration size."""

    def __init__(self, calibration: Optional[Calibration] = None, *, cache_dir: Optional[Path] = None,
                 explore=None):
        self.calibration = calibration
        self.cache_dir = cache_dir
        self.explore = explore
        self.stats = None
        self.history: List[Choice] = []  # one per call
        self._choices: Dict[int, Choice] = {}  # rows -> choice, valid while no new statistics came in

    def choose(self, method, model, batch_size: int, sampling, device) -> object:
        copies = 2 if sampling.uses_cfg else 1
        rows = copies * batch_size
        roles = method.cost_roles(model)
        if self.calibration is None or not all(self.calibration.has(r, rows) for r, m in roles.items() if m is not None):
            self.calibration = Calibration.for_models(roles, rows, device, sampling=sampling,
                                                      cache_dir=self.cache_dir, previous=self.calibration)
        if self.stats is None:
            explore = self.explore if self.explore is not None else method.explore_size()
            self.stats = method.new_size_stats(explore)
            choice = Choice(explore, float("nan"), float("nan"))
        else:
            # The choice is a function of the statistics, the calibration and the rows: evaluating every candidate
            # (hundreds for a tree) is skipped while no step has been observed since (a method that settled on
            # no drafts observes nothing, so its calls stay as cheap as AR's).
            if self.stats._pending:
                self._choices.clear()
            self.stats.fold()
            choice = self._choices.get(rows)
            if choice is None:
                choices = [Choice(size, 1.0 + method.expected_accepted(self.stats, size),
                                  method.step_seconds(self.calibration, rows, size, self.stats))
                           for size in method.size_candidates(self.stats)]
                choice = self._choices[rows] = best(choices)
        self.history.append(choice)
        return choice.size


@contextmanager
def held_size(method):
    """Within the block, ``method`` runs every call at the size it holds now (its last auto-sized call's choice),
    without re-choosing or collecting statistics; outside it, auto sizing resumes. Used to judge the quality of
    an auto-sized method at the size its timed run settled on."""
    sizer, method.sizer = method.sizer, None
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
