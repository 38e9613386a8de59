"""What the demo and the sweep share: the shipped testbed, one decoding run per method (batched for quality and
step counts, batch 1 for wall-clock), and the quality figures of a set of generated images.

Rows are addressed by per-row keys derived once from the seed, so a row generated in a batch of 50 and alone at
batch 1 gets the same uniforms and hence the same tokens (``tests/test_decoding_batching.py``): the batched run
gives quality and step counts, the batch-1 run on a subset of the same rows gives wall-clock time.
"""

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding import SamplingConfig, derive_row_keys, generate, make_method
from ..metrics.evaluate import (DEFAULT_CFG, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, balanced_classes,
                                balanced_test_subset, sample_quality)
from ..testbed import shipped

#: The shipped sampling setting (CFG 3, T 1, top-k 128 of the 1024 codes), the one ``specdec metrics`` reports.
DEFAULT_SAMPLING = SamplingConfig(cfg_scale=DEFAULT_CFG, temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K)


def load(weights=None):
    """The shipped testbed (float32, CPU); raises a clear error naming what to train when weights are missing."""
    return shipped.load_testbed("cpu", weights)


def build_method(tb, name: str, **options):
    """A decoding method wired to the testbed: the small AR draft (sd), the EAGLE head (trees), the VQ codebook
    (gsd, lantern, lantern++); ``options`` go to the method's constructor."""
    return make_method(name, draft_model=tb.draft, head=tb.eagle, codebook=tb.vq.codebook_normalized(), **options)


@dataclass
class MethodRun:
    """Tokens and costs of one method over the evaluation rows."""

    name: str
    tokens: torch.Tensor  # (N, num_tokens)
    row_steps: torch.Tensor  # (N,) speculative steps per row (target forwards = 1 + steps at batch 1)
    accept_lens: List[torch.Tensor]  # per chunk (rows, steps), -1 padded
    num_tokens: int
    timed_seconds: Optional[float] = None  # wall-clock of the batch-1 runs over the timed rows
    timed_rows: int = 0
    extra: Dict = field(default_factory=dict)

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
               sampling: SamplingConfig = DEFAULT_SAMPLING, batch_size: int = 50, timed_rows: int = 0,
               progress: bool = True) -> MethodRun:
    """Generate every row of ``classes`` with ``method`` in batches of ``batch_size`` (quality, step counts), then
    time the first ``timed_rows`` rows again one at a time (after one untimed warm-up row)."""
    tokens, steps, accepts = [], [], []
    n = len(classes)
    chunks = range(0, n, batch_size)
    for i in tqdm(chunks, desc=f"{name}: batched", leave=False, disable=not progress):
        res = generate(tb.target, classes[i : i + batch_size], method, sampling=sampling,
                       row_keys=row_keys[i : i + batch_size])
        tokens.append(res.tokens)
        steps.append(res.metrics.row_steps)
        accepts.append(res.metrics.accept_lens)
    run = MethodRun(name, torch.cat(tokens), torch.cat(steps), accepts, int(tb.target.num_tokens))
    if timed_rows:
        timed = min(timed_rows, n)
        generate(tb.target, classes[:1], method, sampling=sampling, row_keys=row_keys[:1])  # warm-up
        seconds = 0.0
        for i in tqdm(range(timed), desc=f"{name}: batch 1", leave=False, disable=not progress):
            start = time.perf_counter()
            res = generate(tb.target, classes[i : i + 1], method, sampling=sampling, row_keys=row_keys[i : i + 1])
            seconds += time.perf_counter() - start
            if not torch.equal(res.tokens[0], run.tokens[i]):
                raise RuntimeError(f"{name}: row {i} differs between batched and batch-1 generation")
        run.timed_seconds, run.timed_rows = seconds, timed
    return run


def evaluation_rows(images_per_class: int, seed: int):
    """Balanced class ids ``0..9, 0..9, ...`` and their row keys."""
    classes = balanced_classes(10 * images_per_class)
    return classes, derive_row_keys(len(classes), seed)


@torch.no_grad()
def decode(tb, tokens: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Image codes ``(N, num_tokens)`` -> images ``(N, 1, 32, 32)`` in [-1, 1]."""
    return torch.cat([tb.vq.decode(tokens[i : i + batch]) for i in range(0, len(tokens), batch)])


class QualityJudge:
    """Class accuracy, FD-cls and precision/recall of generated images against as many held-out test images."""

    def __init__(self, tb, num_images: int):
        self.tb = tb
        self.real, _, _ = balanced_test_subset(num_images)

    def __call__(self, images: torch.Tensor, classes: torch.Tensor) -> Dict[str, float]:
        return sample_quality(self.tb.classifier, images, classes, self.real)


def cost_row(run: MethodRun, ar_seconds_per_image: Optional[float]) -> Dict[str, float]:
    """The decoding-cost columns of one run (speed-up only when both it and AR were timed)."""
    row = {"method": run.name, "accepted_per_step": run.mean_accepted, "tokens_per_step": run.tokens_per_step,
           "step_compression": run.step_compression}
    if run.timed_seconds is not None and ar_seconds_per_image:
        per_image = run.timed_seconds / run.timed_rows
        row.update({"seconds_per_image": per_image, "speedup": ar_seconds_per_image / per_image})
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


def machine_line(threads: int) -> str:
    import platform

    return (f"{platform.machine()} CPU, {threads} torch thread(s), torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}")
