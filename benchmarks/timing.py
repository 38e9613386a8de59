"""Wall-clock timing helpers: median and 20th/80th percentiles of repeated calls."""

import time
from typing import Callable, Dict

import torch


def measure(fn: Callable[[], object], device: str = "cpu", *, min_time_s: float = 0.2, warmup: int = 3,
            max_reps: int = 2000) -> Dict[str, float]:
    """Time ``fn`` (microseconds); CUDA calls are timed with events after a synchronisation."""
    for _ in range(warmup):
        fn()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < max_reps and (time.perf_counter() - start_all < min_time_s or len(samples) < 5):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(begin.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    pick = lambda q: samples[min(int(q * len(samples)), len(samples) - 1)]  # noqa: E731
    return {"median_us": pick(0.5), "p20_us": pick(0.2), "p80_us": pick(0.8), "reps": len(samples)}


def machine_name() -> str:
    import platform

    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
