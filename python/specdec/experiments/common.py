"""What the demo and the sweep share: the shipped testbed, one decoding run per method over the same rows, and
the quality figures of a set of generated images.

Rows are addressed by per-row keys derived once from the seed, so every method sees the same per-row randomness
whatever the batch layout. (Tokens are the same across batch sizes only up to floating-point: the model's matmuls
reduce in a batch-dependent order, so a sample that sits on a CDF boundary can flip. The demo therefore measures
everything, quality, steps and wall-clock, in one batch-1 run per method.)
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding import SamplingConfig, derive_row_keys, generate, make_method
from ..metrics.evaluate import (DEFAULT_CFG, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, balanced_classes,
                                balanced_test_subset, sample_quality)
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


@dataclass
class RunConfig:
    """What every experiment takes: the evaluation rows (10 classes x ``images_per_class``, keys from ``seed``),
    rows per generate call, where to write, which weights, torch threads."""

    images_per_class: int = 10
    batch_size: int = 1
    seed: int = 0
    out: Path = Path("results")
    weights: Optional[Path] = None
    threads: int = 2
    device: str = "cpu"  # "cpu", "cuda" or "auto"


@dataclass
class MethodRun:
    """Tokens and costs of one method over the evaluation rows."""

    name: str
    tokens: torch.Tensor  # (N, num_tokens)
    row_steps: torch.Tensor  # (N,) speculative steps per row (target forwards = 1 + steps at batch 1)
    accept_lens: List[torch.Tensor]  # per batch (rows, steps), -1 padded
    num_tokens: int
    seconds: float  # wall-clock of all generate calls (after one untimed warm-up call)

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
    one untimed warm-up call on the first row, so one-off costs such as neighbour tables stay out)."""
    generate(tb.target, classes[:1], method, sampling=sampling, row_keys=row_keys[:1])
    tokens, steps, accepts, seconds = [], [], [], 0.0
    n = len(classes)
    for i in tqdm(range(0, n, batch_size), desc=name, leave=False, disable=not progress):
        _synchronize(classes.device)
        start = time.perf_counter()
        res = generate(tb.target, classes[i : i + batch_size], method, sampling=sampling,
                       row_keys=row_keys[i : i + batch_size])
        _synchronize(classes.device)
        seconds += time.perf_counter() - start
        tokens.append(res.tokens.cpu())
        steps.append(res.metrics.row_steps)
        accepts.append(res.metrics.accept_lens)
    return MethodRun(name, torch.cat(tokens), torch.cat(steps), accepts, int(tb.target.num_tokens), seconds)


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


#: Table columns (key, title, format) of :class:`QualityJudge`'s figures.
QUALITY_COLUMNS = (
    ("class_accuracy", "class acc", "{:.3f}"),
    ("fd_cls", "FD-cls", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
)


class QualityJudge:
    """Class accuracy, FD-cls and precision/recall of generated images against as many held-out test images."""

    def __init__(self, tb, num_images: int):
        self.tb = tb
        self.real, _, _ = balanced_test_subset(num_images)

    def __call__(self, images: torch.Tensor, classes: torch.Tensor) -> Dict[str, float]:
        return sample_quality(self.tb.classifier, images.cpu(), classes.cpu(), self.real)


@dataclass
class Setup:
    """What an experiment runs against: the testbed on ``device``, the evaluation rows and their judge."""

    tb: object
    device: torch.device
    classes: torch.Tensor
    keys: torch.Tensor
    judge: QualityJudge
    out: Path


def prepare(config: RunConfig) -> Setup:
    """Threads, output directory, testbed, evaluation rows and judge for ``config``."""
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    tb = load(config.weights, device)
    classes, keys = evaluation_rows(config.images_per_class, config.seed, device)
    return Setup(tb, device, classes, keys, QualityJudge(tb, len(classes)), out)


def judged_run(setup: Setup, name: str, method, *, batch_size: int, keys: Optional[torch.Tensor] = None,
               progress: bool = False):
    """:func:`run_method` over the setup's rows (``keys`` overrides their row keys), decoded and judged:
    ``(run, images, quality)``."""
    run = run_method(setup.tb, name, method, setup.classes, setup.keys if keys is None else keys,
                     batch_size=batch_size, progress=progress)
    images = decode(setup.tb, run.tokens)
    return run, images, setup.judge(images, setup.classes)


def write_outputs(setup: Setup, stem: str, rows: Sequence[Dict], columns: Sequence[tuple], header: str, payload,
                  plot, progress: bool) -> None:
    """``<stem>.csv`` / ``.md`` (the table under ``header``), ``.json`` (``payload``) and ``.png`` (``plot(rows,
    path)``) in the output directory; prints the table when ``progress``."""
    text = write_table(rows, columns, setup.out / f"{stem}.csv", setup.out / f"{stem}.md", header)
    (setup.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, setup.out / f"{stem}.png")
    if progress:
        print(text)


def cost_row(run: MethodRun, ar: Optional[MethodRun] = None) -> Dict[str, float]:
    """The decoding-cost columns of one run; wall-clock columns relative to ``ar`` when given."""
    row = {"method": run.name, "accepted_per_step": run.mean_accepted, "tokens_per_step": run.tokens_per_step,
           "step_compression": run.step_compression}
    if ar is not None:
        row.update({"seconds_per_image": run.seconds_per_image, "speedup": ar.seconds / run.seconds})
        row["speedup_over_compression"] = row["speedup"] / row["step_compression"]
    return row


def write_table(rows: Sequence[Dict], columns: Sequence[tuple], csv_path, md_path, header: str = "") -> str:
    """Write ``rows`` as CSV (full precision) and Markdown (``columns`` = (key, title, format)); returns the MD."""
    import csv

    keys = [key for key, _, _ in columns]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in keys})
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [(fmt.format(r[k]) if r.get(k) is not None and r.get(k) != "" else "-") for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    text = (header + "\n\n" if header else "") + "\n".join(lines) + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    return text


def machine_line(threads: int, device="cpu") -> str:
    import platform

    device = torch.device(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU, {threads} torch thread(s)")
    return f"{where}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
