"""Run several methods on the same rows and summarise them (the hook for ``specdec demo`` / ``sweep``)."""

from typing import Dict, Mapping, Optional, Sequence

import torch

from .logits import SamplingConfig
from .loop import GenerationResult, generate
from .methods import make_method


def compare_methods(
    target,
    classes: torch.Tensor,
    names: Sequence[str],
    *,
    draft_model=None,
    head=None,
    codebook: Optional[torch.Tensor] = None,
    sampling: SamplingConfig = SamplingConfig(),
    seed: int = 0,
    options: Optional[Mapping[str, dict]] = None,
) -> Dict[str, GenerationResult]:
    """Generate ``classes`` with each named method (same row keys for all, so exact methods see the same
    randomness layout); ``options[name]`` goes to that method's constructor."""
    options = options or {}
    results = {}
    for name in names:
        method = make_method(name, draft_model=draft_model, head=head, codebook=codebook, **options.get(name, {}))
        results[name] = generate(target, classes, method, sampling=sampling, seed=seed)
    return results


def summary_table(results: Mapping[str, GenerationResult]) -> str:
    """A Markdown table: target forwards, tokens per step, mean accepted length, wall time, speed-up vs ``ar``."""
    base = results["ar"].metrics.wall_time_s if "ar" in results else None
    lines = ["| method | target forwards | tokens / step | mean accept len | wall s | speed-up |",
             "|---|---|---|---|---|---|"]
    for name, res in results.items():
        s = res.metrics.summary()
        speed = f"{base / s['wall_time_s']:.2f}x" if base else "-"
        lines.append(f"| {name} | {s['target_forwards']} | {s['tokens_per_step']:.2f} | {s['mean_accept_len']:.2f} "
                     f"| {s['wall_time_s']:.2f} | {speed} |")
    return "\n".join(lines)
