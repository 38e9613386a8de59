"""Resumable, seeded training loop: warm-up + cosine learning rate, gradient clipping, periodic atomic checkpoints.

A checkpoint holds the model, the optimiser, the step, the RNG states and the data-order seed; the schedule and the
data order are pure functions of (seed, step), so a killed run resumes where it stopped and reproduces the same
trajectory. Checkpoints are written to a temporary file and renamed into place (never half-written).
"""

import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from tqdm import tqdm

CHECKPOINT_EVERY_S = 180.0


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, total: int, peak: float, warmup_frac: float = 0.1, final_frac: float = 0.05) -> float:
    """Linear warm-up over ``warmup_frac * total`` steps, then cosine decay to ``final_frac * peak``."""
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


class EpochOrder:
    """Data order: epoch ``e`` visits a permutation seeded by ``seed + e``; ``indices(step)`` is a pure function."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
        return self._perm[k * self.batch_size : (k + 1) * self.batch_size]


def train_loop(
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[int], Tuple[torch.Tensor, Dict[str, float]]],
    *,
    total_steps: int,
    lr: float,
    ckpt_path: Path,
    seed: int,
    warmup_frac: float = 0.1,
    clip: Optional[float] = 1.0,
    after_step: Optional[Callable[[int], None]] = None,
    ckpt_every_s: float = CHECKPOINT_EVERY_S,
    log_every: int = 20,
) -> Dict[str, float]:
    """Run ``loss_fn(step) -> (loss, logs)`` for steps ``[start, total_steps)``, resuming from ``ckpt_path``.

    Each step reseeds torch's global RNG from ``(seed, step)`` (dropout, label dropout, stochastic targets), so a
    resumed run follows the same trajectory. Returns the last step's logs (running means over ``log_every``).
    """
    start = 0
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        if state.get("seed", seed) != seed:
            raise ValueError(f"{ckpt_path}: checkpoint seed {state['seed']} != requested {seed}")
        print(f"[{name}] resumed from {ckpt_path} at step {start}/{total_steps}", flush=True)

    def save(step: int) -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "rng": torch.get_rng_state(), "seed": seed, "total_steps": total_steps}, ckpt_path)

    model.train()
    last_save, sums, count, logs = time.time(), {}, 0, {}
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc=name, mininterval=5.0,
               dynamic_ncols=True)
    for step in bar:
        torch.manual_seed(seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, lr, warmup_frac)
        loss, step_logs = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        for k, v in step_logs.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
        if count == log_every or step == total_steps - 1:
            logs = {k: v / count for k, v in sums.items()}
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            print(f"[{name}] step {step + 1}/{total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()),
                  flush=True)
            sums, count = {}, 0
        if time.time() - last_save > ckpt_every_s:
            save(step + 1)
            last_save = time.time()
    save(total_steps)
    model.eval()
    return logs
