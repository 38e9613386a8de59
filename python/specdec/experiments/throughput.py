"""Speed of every method at the batch size served: the papers' fixed sizes next to cost-aware ``size="auto"``,
and at batch > 1 ragged acceptance next to every row truncated to the batch's worst row (what speculative decoders
without ragged rows do at batch > 1).

:func:`run_speed` times each (method, size, mode) over the same rows, ``batch_size`` rows per call after one
untimed warm-up call (which is also an auto-sized method's exploration call), and writes ``throughput.md`` /
``throughput.csv`` / ``throughput.json`` / ``throughput.png`` next to the demo's outputs. Tokens per step is per row: a row's
image tokens (after the prefill's) over the verify steps it took.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .common import build_method, machine_line, run_method, write_table

COLUMNS = (
    ("method", "method", "{}"),
    ("sizing", "sizes", "{}"),
    ("size", "size chosen (last call)", "{}"),
    ("mode", "rows", "{}"),
    ("images", "images", "{}"),
    ("tokens_per_step", "tokens / step", "{:.2f}"),
    ("batch_steps", "steps / batch", "{:.1f}"),
    ("images_per_s", "images / s", "{:.2f}"),
    ("speedup", "speed-up vs ar", "{:.2f}x"),
    ("ragged_over_truncated", "ragged / truncated tokens per step", "{:.2f}x"),
)


@dataclass
class SpeedConfig:
    batch_size: int = 1
    images: int = 20  # rows timed per (method, size, mode): a multiple of batch_size is best
    sizes: Sequence[str] = ("fixed", "auto")
    truncated: Optional[bool] = None  # default: at batch > 1


def speed_rows(setup, names: Sequence[str], config: SpeedConfig, progress: bool = True,
               reuse: Optional[Dict] = None) -> List[Dict]:
    """Time every method of ``names`` (``ar`` first) at each size and mode; one row per (method, size, mode).

    ``reuse``: ``(name, sizing) -> (MethodRun, size label)`` of ragged runs already timed at ``config.batch_size``
    in this process (the demo's timed rows, possibly over more images): their rows are taken from them instead of
    being run again. Speed-ups compare seconds per image."""
    reuse = reuse or {}
    classes, keys = setup.classes[: config.images], setup.keys[: config.images]
    truncated = config.batch_size > 1 if config.truncated is None else config.truncated
    modes = ("ragged", "truncated") if truncated else ("ragged",)
    plan = [("ar", "fixed", "ragged")] + [(n, s, m) for n in names if n != "ar" for s in config.sizes for m in modes]
    rows, ar_per_image, ragged_tps = [], None, {}
    for name, sizing, mode in tqdm(plan, desc="speed", disable=not progress):
        reused = reuse.get((name, sizing)) if mode == "ragged" else None
        if reused is not None:
            run, label = reused
        else:
            method = build_method(setup.tb, name, size=sizing)
            method.truncate_to_worst = mode == "truncated"
            run = run_method(setup.tb, name, method, classes, keys, batch_size=config.batch_size, progress=False)
            label = method.size_label()
        batch_steps = torch.cat([a.new_full((a.shape[0],), (a >= 0).sum(1).max()) for a in run.accept_lens])
        images = len(run.row_steps)
        row = {"method": name, "sizing": sizing, "size": label or "-", "mode": mode, "images": images,
               "tokens_per_step": float(((run.num_tokens - 1) / run.row_steps.clamp_min(1).double()).mean()),
               "batch_steps": float(batch_steps.double().mean()), "images_per_s": images / run.seconds,
               "batch_size": config.batch_size}
        ar_per_image = ar_per_image or run.seconds / images
        row["speedup"] = ar_per_image / (run.seconds / images)
        if mode == "ragged":
            ragged_tps[(name, sizing)] = row["tokens_per_step"]
        elif (name, sizing) in ragged_tps:
            row["ragged_over_truncated"] = ragged_tps[(name, sizing)] / row["tokens_per_step"]
        rows.append(row)
    return rows


def run_speed(setup, names: Sequence[str], config: SpeedConfig, threads: int, progress: bool = True,
              reuse: Optional[Dict] = None) -> List[Dict]:
    """:func:`speed_rows`, written to ``throughput.{md,csv,json,png}`` in the setup's output directory."""
    import json

    rows = speed_rows(setup, names, config, progress, reuse)
    images = min(config.images, len(setup.classes))
    header = (f"# Speed: fixed and auto sizes, batch {config.batch_size}\n\n{images} images per row of the "
              f"table unless the row says otherwise (rows reused from the demo's timed runs), {config.batch_size} per "
              f"call, after one untimed warm-up call. Machine: {machine_line(threads, setup.device)}.")
    text = write_table(rows, COLUMNS, setup.out / "throughput.csv", setup.out / "throughput.md", header)
    (setup.out / "throughput.json").write_text(json.dumps({"config": {"batch_size": config.batch_size,
                                                                 "images": images}, "rows": rows}, indent=2))
    plot_speed(rows, setup.out / "throughput.png")
    if progress:
        print(text)
    return rows


def plot_speed(rows: Sequence[Dict], path: Path) -> None:
    """Images per second per method, one bar per (size, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["method"] for r in rows))
    variants = list(dict.fromkeys((r["sizing"], r["mode"]) for r in rows if r["method"] != "ar"))
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=110)
    ar = [r for r in rows if r["method"] == "ar"]
    if ar:
        ax.axhline(ar[0]["images_per_s"], color="gray", lw=0.8, ls="--", label="ar")
    for i, (sizing, mode) in enumerate(variants):
        xs, ys = [], []
        for j, name in enumerate(names):
            for r in rows:
                if r["method"] == name and (r["sizing"], r["mode"]) == (sizing, mode):
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r["images_per_s"])
        ax.bar(xs, ys, width, label=f"{sizing} sizes, {mode}")
    ax.set_xticks(range(len(names)), names, rotation=25)
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput at batch {rows[0]['batch_size']}" if rows else "Throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
