"""``specdec profile``: where a decoding step's time goes, per method, at batch 1 and at a larger batch.

For every demo method (at the papers' fixed sizes, and with ``size="auto"``) this runs the shipped testbed with a
:class:`~specdec.profiling.timer.PhaseTimer` on the context and reports, per step, the milliseconds spent in each
phase of :data:`~specdec.profiling.timer.PHASES` and the share of the step that is not the target forward. Writes
the tables (docs/PROFILE.md by default) and ``profile.png`` (stacked bars) to ``out`` (``docs/`` by default).

The timer reads the clock at every phase boundary (and synchronises CUDA there), which costs a few microseconds
per phase: shares are accurate to that, absolute times are a little above an unprofiled run.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .timer import PHASE_TITLES, PHASES, PhaseTimer


DEFAULT_OUTPUT = Path("docs/PROFILE.md")  # the tables; the plot goes next to it as profile.png


@dataclass
class ProfileConfig:
    batch_sizes: Sequence[int] = (1, 16)
    images_at_batch_1: int = 3  # batch-1 calls per method (one image each)
    methods: Optional[Sequence[str]] = None  # default: the demo's methods
    sizes: Sequence[str] = ("fixed", "auto")
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    weights: Optional[Path] = None
    out: Path = DEFAULT_OUTPUT.parent
    note: str = ""  # a sentence for the header (e.g. how loaded the machine was)


def profile_method(tb, name: str, method, classes: torch.Tensor, keys: torch.Tensor, batch_size: int,
                   sampling, device: torch.device) -> Dict:
    """Profile ``method`` over ``classes`` (``batch_size`` rows per call) after one untimed warm-up call; returns
    per-step milliseconds per phase, steps, images and wall seconds."""
    from ..decoding import generate

    generate(tb.target, classes[:batch_size], method, sampling=sampling, row_keys=keys[:batch_size])
    timer = PhaseTimer(device)
    start = time.perf_counter()
    row_steps = []
    for i in range(0, len(classes), batch_size):
        res = generate(tb.target, classes[i : i + batch_size], method, sampling=sampling,
                       row_keys=keys[i : i + batch_size], timer=timer)
        row_steps.append(res.metrics.row_steps)
    row_steps = torch.cat(row_steps).double()
    num_tokens = int(tb.target.num_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    per_step = {phase: 1e3 * timer.seconds[phase] / max(1, timer.steps) for phase in PHASES}
    step_ms = sum(per_step.values())
    return {"method": name, "batch_size": batch_size, "images": len(classes), "steps": timer.steps,
            "step_ms": step_ms, "phase_ms": per_step, "wall_s": wall,
            "tokens_per_step": float(((num_tokens - 1) / row_steps.clamp_min(1)).mean()),
            "ms_per_token": 1e3 * wall / (len(classes) * num_tokens),
            "not_target_share": 1.0 - per_step["target_forward"] / step_ms if step_ms else 0.0,
            "size": getattr(method, "size_label", lambda: "")()}


def run_profile(config: ProfileConfig = ProfileConfig(), progress: bool = True) -> List[Dict]:
    from ..decoding import derive_row_keys
    from ..decoding.methods import demo_methods
    from ..experiments.common import DEFAULT_SAMPLING, build_method, load, machine_line, resolve_device

    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    tb = load(config.weights, config.device)
    names = list(config.methods or demo_methods())
    rows = []
    for batch in config.batch_sizes:
        count = config.images_at_batch_1 if batch == 1 else batch
        classes = (torch.arange(count) % 10).to(device)
        keys = derive_row_keys(count, config.seed, device)
        for size in config.sizes:
            for name in names:
                if size == "auto" and name == "ar":
                    continue
                options = {"size": "auto"} if size == "auto" else {}
                method = build_method(tb, name, **options)
                row = profile_method(tb, name, method, classes, keys, batch, DEFAULT_SAMPLING, device)
                row["sizing"] = size
                rows.append(row)
                if progress:
                    print(f"batch {batch:>2} {size:>5} {name:<10} {row['step_ms']:7.2f} ms/step, "
                          f"not target forward {100 * row['not_target_share']:5.1f} % {row['size']}", flush=True)
    header = machine_line(config.threads, device)
    write_profile(rows, Path(config.out), header, config.note)
    return rows


def profile_table(rows: Sequence[Dict]) -> str:
    cols = (["method", "size", "tokens / step", "ms / image token", "ms / step"] + [p.replace("_", " ") for p in PHASES]
            + ["not target fwd"])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["method"], r.get("size") or r.get("sizing", ""), f"{r['tokens_per_step']:.2f}",
                 f"{r['ms_per_token']:.2f}", f"{r['step_ms']:.2f}"]
        cells += [f"{r['phase_ms'][p]:.2f}" for p in PHASES]
        cells.append(f"{100 * r['not_target_share']:.0f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_profile(rows: Sequence[Dict], out: Path, machine: str, note: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Profile of a decoding step", "",
             "Produced by `specdec profile` (python/specdec/profiling/profile.py): every demo method on the shipped "
             "testbed (CFG 3, T 1, top-k 128), per step, with the phase timer on the decoding context. "
             f"Machine: {machine}." + (f" {note}" if note else ""), "",
             "*ms / image token* is wall-clock per image token of the profiled calls (batch rows together, prefill "
             "included): AR's over a method's is its speed-up. *not target fwd* is the share of a step outside the "
             "target forward.", "",
             "Phases (milliseconds per step; a phase's time excludes phases nested in it):", ""]
    parts += [f"* **{p.replace('_', ' ')}**: {PHASE_TITLES[p]}" for p in PHASES]
    for batch in sorted({r["batch_size"] for r in rows}):
        for sizing in ("fixed", "auto"):
            sel = [r for r in rows if r["batch_size"] == batch and r.get("sizing") == sizing]
            if sel:
                parts += ["", f"## Batch {batch}, {sizing} sizes", "", profile_table(sel)]
    parts += ["", "![profile](profile.png)", ""]
    (out / DEFAULT_OUTPUT.name).write_text("\n".join(parts))
    plot_profile(rows, out / "profile.png")


def plot_profile(rows: Sequence[Dict], path: Path) -> None:
    """Stacked bars of milliseconds per step by phase, one panel per (batch, sizing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["batch_size"], r.get("sizing", "fixed")) for r in rows}, key=lambda p: (p[0], p[1] != "fixed"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), dpi=110, squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (batch, sizing) in zip(axes[0], panels):
        sel = [r for r in rows if r["batch_size"] == batch and r.get("sizing", "fixed") == sizing]
        x = range(len(sel))
        bottom = [0.0] * len(sel)
        for i, phase in enumerate(PHASES):
            vals = [r["phase_ms"][phase] for r in sel]
            ax.bar(x, vals, 0.7, bottom=bottom, color=colors[i], label=phase.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(list(x), [r["method"] for r in sel], rotation=35, fontsize=8)
        ax.set_title(f"batch {batch}, {sizing} sizes", fontsize=9)
        ax.set_ylabel("ms per step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
