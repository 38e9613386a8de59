"""What the demo and the sweep share: the shipped testbed, decoding runs over fixed rows, and the judged quality
of a method's images.

Rows are addressed by per-row keys derived once from the seed, so every method sees the same per-row randomness
whatever the batch layout. (Tokens are the same across batch sizes only up to floating-point: the model's matmuls
reduce in a batch-dependent order, so a sample that sits on a CDF boundary can flip. Costs and wall-clock are
therefore measured in one run at the stated batch size.)

Two sets of rows:

* the *timed* rows (``images_per_class`` per class, demo only): decoded at the stated batch size and timed;
* the *judged* rows (``judge_images``, balanced over classes, keys from the same seed): generated batched and
  untimed, the same classes and keys for every method, and judged against as many held-out test images
  (:class:`QualityJudge`: class accuracy, FD-cls, KID, precision / recall with bootstrap intervals, and each
  method's paired difference to AR; :mod:`specdec.metrics.bootstrap`).
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding import SamplingConfig, derive_row_keys, generate, make_method
from ..metrics.bootstrap import FIGURES, BootstrapJudge, Judged, judge_table_fields
from ..metrics.classifier import classify
from ..metrics.evaluate import DEFAULT_CFG, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, balanced_classes, balanced_test_subset
from ..testbed import shipped

#: The shipped sampling setting (CFG 3, T 1, top-k 128 of the 1024 codes), the one ``specdec metrics`` reports.
DEFAULT_SAMPLING = SamplingConfig(cfg_scale=DEFAULT_CFG, temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K)


#: Per-method options for the LlamaGen-style testbed: SJD's LlamaGen code initialises fresh Jacobi tokens by
#: repeating the left neighbour (``repeat_horizon``, docs/ALGORITHMS.md §2.2); GSD reuses SJD's drafts. The classes keep
#: the Lumina-mGPT default (random init); the sweep reports both.
TESTBED_OPTIONS = {"sjd": {"init": "repeat_left"}, "gsd": {"init": "repeat_left"}}


def resolve_device(device: str = "cpu") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise ``device`` itself (a clear error when CUDA is asked
    for but absent)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


def load(weights=None, device: str = "cpu"):
    """The shipped testbed (float32) on ``device``, the classifier on the CPU (quality is judged there); raises a
    clear error naming what to train when weights are missing."""
    tb = shipped.load_testbed(resolve_device(device), weights)
    tb.classifier = tb.classifier.cpu()
    return tb


def build_method(tb, name: str, **options):
    """A decoding method wired to the testbed: the small AR draft (sd), the EAGLE head (trees), the VQ codebook
    (gsd, lantern, lantern++); ``options`` (over :data:`TESTBED_OPTIONS`) go to the method's constructor."""
    options = {**TESTBED_OPTIONS.get(name, {}), **options}
    return make_method(name, draft_model=tb.draft, head=tb.eagle, codebook=tb.vq.codebook_normalized(), **options)


#: Target entries per forward the judged (batched, untimed) runs aim at: rows per call are
#: ``JUDGE_FEED // method.max_feed()`` within [8, 250]. The 2.2 M-parameter target is compute-bound on a CPU once a
#: forward carries about a thousand entries: AR (one entry per row) gains from the widest batches, while a method
#: feeding a 16-token window or a 59-node tree per row has reached that regime at a few dozen rows, past which wider
#: batches mostly add work on finished or padded rows.
JUDGE_FEED = 1200
JUDGE_BATCH_RANGE = (8, 250)


@dataclass
class RunConfig:
    """What every experiment takes: the timed rows (10 classes x ``images_per_class``, keys from ``seed``) and
    their batch size, the judged rows (``judge_images``, generated ``judge_batch`` rows per call, default
    from :data:`JUDGE_FEED`) and bootstrap replicates, where to write, which weights, torch threads."""

    images_per_class: int = 10
    batch_size: int = 1
    seed: int = 0
    out: Path = Path("results")
    weights: Optional[Path] = None
    threads: int = 2
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    judge_images: int = 1000
    judge_batch: Optional[int] = None
    bootstrap_replicates: int = 200
    resume_dir: Optional[Path] = None  # keep each judged run's tokens here and reuse them on a rerun

    def __post_init__(self):
        if self.judge_images < 10 or self.judge_images % 10:
            raise ValueError(f"judge_images must be a positive multiple of 10 (balanced classes), got "
                             f"{self.judge_images}")
        if self.bootstrap_replicates < 2:
            raise ValueError(f"bootstrap_replicates must be >= 2, got {self.bootstrap_replicates}")

    def judge_batch_for(self, method) -> int:
        """Rows per call of ``method``'s judged runs: ``judge_batch``, else from its entries per forward
        (:data:`JUDGE_FEED`)."""
        if self.judge_batch:
            return self.judge_batch
        lo, hi = JUDGE_BATCH_RANGE
        return max(lo, min(hi, JUDGE_FEED // max(1, int(method.max_feed()))))


@dataclass
class MethodRun:
    """Tokens and costs of one method over the evaluation rows."""

    name: str
    tokens: torch.Tensor  # (N, num_tokens)
    row_steps: torch.Tensor  # (N,) speculative steps per row (target forwards = 1 + steps at batch 1)
    accept_lens: List[torch.Tensor]  # per batch (rows, steps), -1 padded
    num_tokens: int
    seconds: float  # wall-clock of all generate calls (after one untimed warm-up call)
    batch_seconds: Optional[List[float]] = None  # wall-clock of each call, in row order (when recorded)

    def select(self, calls: Sequence[int]) -> "MethodRun":
        """This run over some of its calls (indices into its calls, in row order): what it spent on the rows another
        run, timed on those calls only (:func:`run_methods`' ``calls``), covered."""
        if self.batch_seconds is None:
            raise ValueError(f"{self.name}: per-call times were not recorded")
        starts = [0]
        for a in self.accept_lens:
            starts.append(starts[-1] + a.shape[0])
        calls = sorted(set(int(c) for c in calls))
        if calls and not 0 <= calls[0] <= calls[-1] < len(self.accept_lens):
            raise ValueError(f"{self.name}: calls must lie in [0, {len(self.accept_lens)}), got {calls}")
        rows = [r for c in calls for r in range(starts[c], starts[c + 1])]
        return MethodRun(self.name, self.tokens[rows], self.row_steps[rows], [self.accept_lens[c] for c in calls],
                         self.num_tokens, float(sum(self.batch_seconds[c] for c in calls)),
                         [self.batch_seconds[c] for c in calls])

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.row_steps)

    @property
    def step_compression(self) -> float:
        """AR target forwards / this method's target forwards, over all rows (batch 1: prefill + one per step)."""
        return self.num_tokens * len(self.row_steps) / float((1 + self.row_steps).sum())

    @property
    def tokens_per_step(self) -> float:
        """Tokens committed per speculative step (the prefill's token excluded), over all rows."""
        return (self.num_tokens - 1) * len(self.row_steps) / float(self.row_steps.sum().clamp_min(1))

    @property
    def mean_accepted(self) -> float:
        """Mean accepted drafts per verification."""
        taken = torch.cat([a[a >= 0] for a in self.accept_lens])
        return float(taken.double().mean()) if taken.numel() else 0.0


def run_method(tb, name: str, method, classes: torch.Tensor, row_keys: torch.Tensor, *,
               sampling: SamplingConfig = DEFAULT_SAMPLING, batch_size: int = 1, progress: bool = True) -> MethodRun:
    """Generate every row of ``classes`` with ``method``, ``batch_size`` rows per call, timing the calls (after
    one untimed warm-up call on the first ``batch_size`` rows, so one-off costs such as neighbour tables, a cost
    calibration at this batch size or an auto-sized method's exploration call stay out)."""
    return run_methods(tb, {name: method}, classes, row_keys, sampling=sampling, batch_size=batch_size,
                       progress=progress)[name]


def spread_calls(num_calls: int, count: int) -> List[int]:
    """``count`` call indices spread evenly over ``num_calls`` calls, the last one included (the first calls of an
    auto-sized method explore; spread out, the picked calls sample the whole run)."""
    count = max(0, min(int(count), int(num_calls)))
    return [((i + 1) * num_calls) // count - 1 for i in range(count)]


def run_methods(tb, methods: Dict[str, object], classes: torch.Tensor, row_keys: torch.Tensor, *,
                sampling: SamplingConfig = DEFAULT_SAMPLING, batch_size: int = 1, progress: bool = True,
                calls: Optional[Dict[str, Sequence[int]]] = None) -> Dict[str, MethodRun]:
    """:func:`run_method` for several methods side by side: after every method's warm-up call, batch ``i`` of
    every method runs before batch ``i + 1`` of any, in an order rotated by one per batch. The speed of a shared
    or thermally limited CPU drifts by 10-30 % over minutes; interleaved, a drift falls on every method alike
    instead of on whichever method happened to run through it, so the ratios of the timings stay fair.

    ``calls``: ``name -> call indices`` runs that method on those calls' rows only (call ``i``: rows
    ``i * batch_size ..``), interleaved with the others there; compare it with the others'
    :meth:`MethodRun.select` of the same calls."""
    n = len(classes)
    num_calls = -(-n // batch_size)
    only = {}
    for name, picked in (calls or {}).items():
        picked = set(int(c) for c in picked)
        if name not in methods or not picked or not all(0 <= c < num_calls for c in picked):
            raise ValueError(f"calls: {name!r} must name a method and give call indices in [0, {num_calls}), got "
                             f"{sorted(picked)}")
        only[name] = picked
    names = list(methods)
    for name in names:
        generate(tb.target, classes[:batch_size], methods[name], sampling=sampling, row_keys=row_keys[:batch_size])
    parts = {name: {"tokens": [], "steps": [], "accepts": [], "calls": []} for name in names}
    starts = range(0, n, batch_size)
    desc = names[0] if len(names) == 1 else f"{len(names)} methods, interleaved"
    for j, i in enumerate(tqdm(starts, desc=desc, leave=False, disable=not progress)):
        for name in names[j % len(names):] + names[: j % len(names)]:
            if name in only and j not in only[name]:
                continue
            _synchronize(classes.device)
            start = time.perf_counter()
            res = generate(tb.target, classes[i : i + batch_size], methods[name], sampling=sampling,
                           row_keys=row_keys[i : i + batch_size])
            _synchronize(classes.device)
            part = parts[name]
            part["calls"].append(time.perf_counter() - start)
            part["tokens"].append(res.tokens.cpu())
            part["steps"].append(res.metrics.row_steps)
            part["accepts"].append(res.metrics.accept_lens)
    return {name: MethodRun(name, torch.cat(p["tokens"]), torch.cat(p["steps"]), p["accepts"],
                            int(tb.target.num_tokens), float(sum(p["calls"])), p["calls"])
            for name, p in parts.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluation_rows(images_per_class: int, seed: int, device="cpu"):
    """Balanced class ids ``0..9, 0..9, ...`` and their row keys, on ``device``."""
    classes = balanced_classes(10 * images_per_class).to(device)
    return classes, derive_row_keys(len(classes), seed, device)


@torch.no_grad()
def decode(tb, tokens: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Image codes ``(N, num_tokens)`` -> images ``(N, 1, 32, 32)`` in [-1, 1], on the CPU."""
    device = next(tb.vq.parameters()).device
    return torch.cat([tb.vq.decode(tokens[i : i + batch].to(device)).cpu() for i in range(0, len(tokens), batch)])


#: Scale of KID in tables and plots (on these 128-d features with the 1/F kernel its values are of order 1-10).
KID_SCALE = 1.0


def interval_cell(key: str, fmt: str, scale: float = 1.0):
    """Table cell formatter: ``value [lo, hi]`` from ``row[key]``, ``row[key + "_lo"]``, ``row[key + "_hi"]``."""

    def cell(row: Dict) -> str:
        if row.get(key) is None:
            return "-"
        v, lo, hi = (row[key] * scale, row[key + "_lo"] * scale, row[key + "_hi"] * scale)
        return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"

    return cell


#: Table columns (key, title, format or row formatter) of the judged figures with their 95 % intervals, and of
#: the paired differences to AR.
QUALITY_COLUMNS = (
    ("class_accuracy", "class acc", interval_cell("class_accuracy", "{:.3f}")),
    ("fd_cls", "FD-cls", interval_cell("fd_cls", "{:.2f}")),
    ("kid", "KID", interval_cell("kid", "{:.2f}", KID_SCALE)),
    ("precision", "precision", interval_cell("precision", "{:.3f}")),
    ("recall", "recall", interval_cell("recall", "{:.3f}")),
    ("kid_diff", "KID - AR's", interval_cell("kid_diff", "{:+.2f}", KID_SCALE)),
    ("fd_cls_diff", "FD-cls - AR's", interval_cell("fd_cls_diff", "{:+.2f}")),
    ("verdict", "verdict (KID)", "{}"),
    ("beyond_chance", "figures beyond chance", "{}"),
)
#: Every judged field (CSV columns): figures, intervals, paired differences and their intervals, verdict.
QUALITY_FIELDS = tuple(f"{f}{suffix}" for f in FIGURES for suffix in ("", "_lo", "_hi", "_diff", "_diff_lo",
                                                                      "_diff_hi")) + ("verdict", "beyond_chance")


class QualityJudge:
    """Judges a method's images on the judged rows: class accuracy, FD-cls, KID, precision / recall against as many
    balanced held-out test images, with bootstrap intervals and paired differences (replicates are drawn once,
    so every method judged here is resampled on the same rows; :mod:`specdec.metrics.bootstrap`)."""

    def __init__(self, classifier, classes: torch.Tensor, num_replicates: int = 200, seed: int = 0):
        self.classifier = classifier
        self.classes = classes.cpu()
        real, real_labels, _ = balanced_test_subset(len(classes))
        self.bootstrap = BootstrapJudge(classify(classifier, real)["features"], real_labels, self.classes,
                                        num_replicates=num_replicates, seed=seed)

    def __call__(self, images: torch.Tensor) -> Judged:
        """``images`` ``(N, 1, 32, 32)`` of the judged rows, in row order."""
        out = classify(self.classifier, images.cpu())
        return self.bootstrap.judge(out["features"], out["probs"].argmax(-1) == self.classes)

    @staticmethod
    def fields(judged: Judged, ar: Optional[Judged]) -> Dict[str, object]:
        """Table fields of ``judged``, with paired differences to ``ar`` when given."""
        return judge_table_fields(judged, ar)


@dataclass
class Setup:
    """What an experiment runs against: the testbed on ``device``, the timed rows, the judged rows and their
    judge."""

    tb: object
    device: torch.device
    classes: torch.Tensor
    keys: torch.Tensor
    judged_classes: torch.Tensor
    judged_keys: torch.Tensor
    judge: QualityJudge
    out: Path
    config: RunConfig


def prepare(config: RunConfig, progress: bool = False) -> Setup:
    """Threads, output directory, testbed, timed and judged rows, and the judge for ``config``."""
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    tb = load(config.weights, device)
    classes, keys = evaluation_rows(config.images_per_class, config.seed, device)
    judged_classes, judged_keys = evaluation_rows(config.judge_images // 10, config.seed, device)
    if progress:
        print(f"bootstrap judge: {config.judge_images} held-out images, {config.bootstrap_replicates} replicates")
    judge = QualityJudge(tb.classifier, judged_classes, config.bootstrap_replicates, config.seed)
    return Setup(tb, device, classes, keys, judged_classes, judged_keys, judge, out, config)


def timed_run(setup: Setup, name: str, method, *, batch_size: int, progress: bool = False):
    """:func:`run_method` over the timed rows, decoded: ``(run, images)``."""
    return timed_runs(setup, {name: method}, batch_size=batch_size, progress=progress)[name]


def timed_runs(setup: Setup, methods: Dict[str, object], *, batch_size: int, progress: bool = False,
               calls: Optional[Dict[str, Sequence[int]]] = None):
    """:func:`run_methods` (interleaved; ``calls`` limits some methods to some calls) over the timed rows,
    decoded: ``name -> (run, images)``."""
    runs = run_methods(setup.tb, methods, setup.classes, setup.keys, batch_size=batch_size, progress=progress,
                       calls=calls)
    return {name: (run, decode(setup.tb, run.tokens)) for name, run in runs.items()}


def judged_images(setup: Setup, name: str, method, *, keys: Optional[torch.Tensor] = None, progress: bool = False):
    """:func:`run_method` over the judged rows (``keys`` overrides their row keys), batched and decoded:
    ``(run, images)``. The run's step counts are over the judged rows; its wall-clock is not reported."""
    keys = setup.judged_keys if keys is None else keys
    saved = _resume_path(setup, name, keys)
    if saved is not None and saved.is_file():
        run = MethodRun(**torch.load(saved))
    else:
        run = run_method(setup.tb, f"{name} (judged)", method, setup.judged_classes, keys,
                         batch_size=setup.config.judge_batch_for(method), progress=progress)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: getattr(run, k) for k in ("name", "tokens", "row_steps", "accept_lens", "num_tokens",
                                                     "seconds")}, saved)
    return run, decode(setup.tb, run.tokens)


def _resume_path(setup: Setup, name: str, keys: torch.Tensor) -> Optional[Path]:
    """Where a judged run's tokens are kept with ``resume_dir``: named by the run, the rows' classes and keys and
    the weights, so a rerun with other rows, seeds or weights never picks them up."""
    if setup.config.resume_dir is None:
        return None
    import hashlib

    digest = hashlib.sha1()
    for t in (setup.judged_classes, keys):
        digest.update(t.cpu().numpy().tobytes())
    digest.update(str(setup.config.weights).encode())
    slug = "".join(ch if ch.isalnum() or ch in "=.-" else "_" for ch in name)
    return Path(setup.config.resume_dir) / f"{slug}-{digest.hexdigest()[:12]}.pt"


def judged_run(setup: Setup, name: str, method, *, keys: Optional[torch.Tensor] = None, progress: bool = False):
    """:func:`judged_images`, judged: ``(run, images, judged)``."""
    run, images = judged_images(setup, name, method, keys=keys, progress=progress)
    return run, images, setup.judge(images)


def write_outputs(setup: Setup, stem: str, rows: Sequence[Dict], csv_fields: Sequence[str], markdown: str, payload,
                  plot, progress: bool) -> None:
    """``<stem>.csv`` (``csv_fields`` of ``rows``), ``.md`` (``markdown``), ``.json`` (``payload``) and ``.png``
    (``plot(rows, path)``) in the output directory; prints the Markdown when ``progress``."""
    write_csv(rows, csv_fields, setup.out / f"{stem}.csv")
    (setup.out / f"{stem}.md").write_text(markdown)
    (setup.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, setup.out / f"{stem}.png")
    if progress:
        print(markdown)


def judged_header(setup: Setup) -> str:
    """The paragraph that says how quality was judged."""
    c = setup.config
    return (f"Quality: {c.judge_images} images per method ({c.judge_images // 10} per class, seed {c.seed}; the same "
            f"classes and per-row seeds for every method), generated in batches and untimed, against {c.judge_images} "
            f"held-out test images, on the shipped classifier's features (FD-cls and KID are not FID / Inception KID). "
            f"[95 % interval]: bootstrap ({c.bootstrap_replicates} class-stratified replicates, normal interval); "
            f"*- AR's*: paired difference to AR (the same rows resampled in both, the held-out images fixed). "
            f"*verdict*: worse / better when the interval of the KID difference excludes zero, else within chance; "
            f"*figures beyond chance*: every figure whose difference interval excludes zero (- worse, + better "
            f"quality). `ar (seed + 1)` is AR with other seeds: the chance reference (at the 95 % level about one "
            f"figure in 20 lands beyond chance by chance alone).")


def cost_row(run: MethodRun, ar: Optional[MethodRun] = None) -> Dict[str, float]:
    """The decoding-cost columns of one run; wall-clock columns relative to ``ar`` when given."""
    row = {"method": run.name, "accepted_per_step": run.mean_accepted, "tokens_per_step": run.tokens_per_step,
           "step_compression": run.step_compression}
    if ar is not None:
        row.update({"seconds_per_image": run.seconds_per_image, "speedup": ar.seconds / run.seconds})
        row["speedup_over_compression"] = row["speedup"] / row["step_compression"]
    return row


def write_csv(rows: Sequence[Dict], fields: Sequence[str], path) -> None:
    """``rows`` as CSV with columns ``fields`` (full precision; missing fields empty)."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})


def write_table(rows: Sequence[Dict], columns: Sequence[tuple], csv_path, md_path, header: str = "") -> str:
    """Write ``rows`` as CSV (full precision) and Markdown (``columns`` = (key, title, format string or
    ``row -> str``)); returns the MD."""
    write_csv(rows, [key for key, _, _ in columns], csv_path)
    text = (header + "\n\n" if header else "") + markdown_table(rows, columns)
    with open(md_path, "w") as f:
        f.write(text)
    return text


def _cell(row: Dict, key: str, fmt) -> str:
    if callable(fmt):
        return fmt(row)
    return fmt.format(row[key]) if row.get(key) is not None and row.get(key) != "" else "-"


def markdown_table(rows: Sequence[Dict], columns: Sequence[tuple]) -> str:
    """``rows`` as a Markdown table; ``columns`` = (key, title, format string or ``row -> str``)."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, fmt) for k, _, fmt in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_line(threads: int, device="cpu") -> str:
    import platform

    device = torch.device(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU, {threads} torch thread(s)")
    return f"{where}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
