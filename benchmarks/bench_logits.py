"""The whole verification step from raw logits: ours (``verify_chain_logits``, processing fused into the
verification) against eager processing + our ``verify_chain`` and ``torch.compile``d processing + our
``verify_chain``.

The baselines run the textbook float32 pipeline a decoding loop would write (docs/TESTBED.md §1.4): CFG on the
doubled batch, temperature, top-k threshold mask, (HF top-p), softmax, for the target logits (B, L+1, V) and the
draft logits (B, L, V), then ``verify_chain(p, q, ...)`` on the CPU kernel. Both sides get the same raw logits,
drafts drawn from the processed draft distributions, and the same uniforms. The providers are timed interleaved
(one call of each per round, many rounds) and the median is reported, so machine noise hits them alike.

Usage: ``python -m benchmarks.bench_logits [--quick] [--device cuda] [--budget-s S] [--cases a,b] [--out DIR]``
writes ``<machine>-logits.csv`` / ``.md`` (again after every case, so a run cut off keeps what it measured);
``pytest benchmarks/bench_logits.py`` runs the same cases as pytest-benchmark tests. On ``--device cuda`` the
inputs live on the GPU, ours and ``verify_chain`` run on the CUDA backend, and every timed call ends with a
synchronisation (the step's latency as a decoding loop sees it).
"""

import argparse
import csv
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import pytest
import torch

import specdec_kernels as sk

from .timing import machine_name

#: (name, batch, drafts L, vocab, cfg_scale, temperature, top_k, top_p)
CASES = [
    ("llamagen-eval", 8, 15, 16384, 1.75, 1.0, 0, 1.0),
    ("llamagen-demo", 8, 15, 16384, 4.0, 1.0, 2000, 1.0),
    ("top-p", 8, 15, 16384, 2.0, 1.0, 0, 0.9),
    ("testbed", 8, 15, 1024, 3.0, 1.0, 128, 1.0),
    ("testbed-b1", 1, 15, 1024, 3.0, 1.0, 128, 1.0),
]


def eager_processing(logits: torch.Tensor, cfg_scale: Optional[float], temperature: float, top_k: int,
                     top_p: float) -> torch.Tensor:
    """CFG -> temperature -> top-k -> top-p (HF) -> softmax in float32, as a decoding loop writes it."""
    x = logits
    if cfg_scale is not None:
        half = x.shape[0] // 2
        x = x[half:] + cfg_scale * (x[:half] - x[half:])
    x = x / max(temperature, 1e-5)
    if 0 < top_k < x.shape[-1]:
        x = x.masked_fill(x < torch.topk(x, top_k, dim=-1).values[..., -1:], -math.inf)
    if top_p < 1.0:
        ordered, order = torch.sort(x, dim=-1, descending=False)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1:] = False
        x = x.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    return torch.softmax(x, dim=-1)


def make_inputs(batch: int, drafts: int, vocab: int, cfg_scale: float, temperature: float, top_k: int,
                top_p: float, seed: int = 0) -> Dict:
    """Target logits (2B, L+1, V) and CFG'd draft logits (2B, L, V) near them, drafts sampled from the processed
    draft distribution (so the acceptance rate is realistic, a few tokens per row), uniforms."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * batch, drafts + 1, vocab, generator=gen) * 2.0
    draft_logits = logits[:, :drafts] + torch.randn(2 * batch, drafts, vocab, generator=gen) * 0.6
    q = eager_processing(draft_logits, cfg_scale, temperature, top_k, top_p)
    draft = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(batch, drafts)
    return {"logits": logits, "draft_logits": draft_logits, "draft": draft,
            "u_accept": torch.rand(batch, drafts, generator=gen), "u_sample": torch.rand(batch, generator=gen),
            "processing": {"cfg_scale": cfg_scale, "temperature": temperature, "top_k": top_k, "top_p": top_p}}


def _on_device(inputs: Dict, device: str) -> Dict:
    """``inputs`` with every tensor on ``device`` (made on the CPU, so every device gets the same values)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def providers(inputs: Dict, backend: str = "cpu") -> Dict[str, Callable[[], object]]:
    proc = inputs["processing"]
    # One specialised graph per shape; the raised limit keeps a long run from silently falling back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(eager_processing, dynamic=False)

    def ours():
        return sk.verify_chain_logits(inputs["logits"], inputs["draft"], inputs["u_accept"], inputs["u_sample"],
                                      draft_logits=inputs["draft_logits"], **proc, backend=backend)

    def pipeline(process):
        def run():
            p = process(inputs["logits"], **proc)
            q = process(inputs["draft_logits"], **proc)
            return sk.verify_chain(p, q, inputs["draft"], inputs["u_accept"], inputs["u_sample"], backend=backend,
                                   validate=False)
        return run

    return {"ours": ours, "eager": pipeline(eager_processing), "compiled": pipeline(compiled)}


def measure_side_by_side(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 3, min_rounds: int = 15,
                         budget_s: float = 90.0, clock: Callable[[], float] = time.perf_counter) -> Dict[str, Dict]:
    """One call of each provider per round (interleaved), ``rounds`` rounds (fewer, but at least ``min_rounds``,
    once ``budget_s`` is spent); median and 20/80th percentiles. ``clock`` is wall time by default;
    ``time.process_time`` counts this process's CPU time only, which a loaded machine's preemption does not
    inflate (meaningful with one thread)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for done in range(rounds):
        if done >= min_rounds and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1e6)
    out = {}
    for name, values in samples.items():
        values.sort()
        pick = lambda q: values[min(int(q * len(values)), len(values) - 1)]  # noqa: E731
        out[name] = {"median_us": statistics.median(values), "p20_us": pick(0.2), "p80_us": pick(0.8),
                     "best_us": values[0], "rounds": len(values)}
    return out


def _synchronized(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronisation, so a wall-clock timing covers the work, not only its launch."""
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


def run(rounds: int, out_dir: str, cases=CASES, clock: str = "wall", device: str = "cpu",
        budget_s: float = math.inf) -> List[Dict]:
    """Measure ``cases`` on ``device``; the cases share ``budget_s`` seconds of timing (each gets an equal share of
    what is left, and at least a few rounds); the results are written after every case."""
    rows = []
    backend = "cpu"
    if device == "cuda":
        backend = "cuda" if "cuda" in sk.available_backends() else "triton"
    deadline = time.monotonic() + budget_s
    for index, (name, batch, drafts, vocab, cfg, temperature, top_k, top_p) in enumerate(cases):
        inputs = _on_device(make_inputs(batch, drafts, vocab, cfg, temperature, top_k, top_p), device)
        fns = providers(inputs, backend)
        if device == "cuda":
            fns = {k: _synchronized(fn) for k, fn in fns.items()}
        accept_len, next_token = fns["ours"]()
        want = fns["eager"]()
        share = max(deadline - time.monotonic(), 0.0) / (len(cases) - index)
        timings = measure_side_by_side(fns, rounds, min_rounds=min(rounds, 3 if share < 1 else 15), budget_s=share,
                                       clock=time.process_time if clock == "cpu" else time.perf_counter)
        ours = timings["ours"]["median_us"]
        rows.append({
            "case": name, "batch": batch, "drafts": drafts, "vocab": vocab, "cfg_scale": cfg,
            "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "mean_accept_len": round(accept_len.double().mean().item(), 2),
            "same_accept_len_as_eager": bool(torch.equal(accept_len, want[0])),
            **{f"{p}_median_us": round(t["median_us"], 1) for p, t in timings.items()},
            **{f"{p}_p20_us": round(t["p20_us"], 1) for p, t in timings.items()},
            **{f"{p}_p80_us": round(t["p80_us"], 1) for p, t in timings.items()},
            **{f"{p}_best_us": round(t["best_us"], 1) for p, t in timings.items()},
            "speedup_vs_eager": round(timings["eager"]["median_us"] / ours, 2),
            "speedup_vs_compiled": round(timings["compiled"]["median_us"] / ours, 2),
            "best_speedup_vs_eager": round(timings["eager"]["best_us"] / timings["ours"]["best_us"], 2),
            "best_speedup_vs_compiled": round(timings["compiled"]["best_us"] / timings["ours"]["best_us"], 2),
            "rounds": timings["ours"]["rounds"],
        })
        print(f"{name}: ours {ours:.0f} us, eager {timings['eager']['median_us']:.0f} us, compiled "
              f"{timings['compiled']['median_us']:.0f} us -> {rows[-1]['speedup_vs_eager']}x / "
              f"{rows[-1]['speedup_vs_compiled']}x", flush=True)
        write(rows, out_dir, clock, backend)
    return rows


def write(rows: List[Dict], out_dir: str, clock: str = "wall", backend: str = "cpu"):
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{machine_name()}-logits" + ("-cputime" if clock == "cpu" else ""))
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# The verification step from raw logits ({machine_name()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {'process CPU time' if clock == 'cpu' else 'wall time'})",
        "",
        f"ours = `verify_chain_logits` (processing fused into the {backend} verification kernel); eager / compiled = "
        "the float32 processing of target and draft logits (CFG, temperature, top-k, top-p, softmax) eager or "
        "`torch.compile`d, then our `verify_chain` (`validate=False`). Medians of interleaved rounds in µs "
        "(20th-80th percentile in brackets); × = ratio of medians, best × = ratio of the fastest calls (less "
        "sensitive to a loaded machine). The machine is shared: read the ratios, not the absolute times.",
        "",
        "| case | B | L | V | CFG | T | top-k | top-p | mean accept | ours µs | eager µs | compiled µs "
        "| × eager | × compiled | best × eager | best × compiled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cell = lambda p: f"{r[p + '_median_us']:.0f} [{r[p + '_p20_us']:.0f}-{r[p + '_p80_us']:.0f}]"  # noqa: E731
        lines.append(f"| {r['case']} | {r['batch']} | {r['drafts']} | {r['vocab']} | {r['cfg_scale']} | "
                     f"{r['temperature']} | {r['top_k']} | {r['top_p']} | {r['mean_accept_len']} | {cell('ours')} | "
                     f"{cell('eager')} | {cell('compiled')} | {r['speedup_vs_eager']} | {r['speedup_vs_compiled']} | "
                     f"{r['best_speedup_vs_eager']} | {r['best_speedup_vs_compiled']} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------ pytest-benchmark cases


@pytest.mark.skipif("cpu" not in sk.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("provider", ["ours", "eager", "compiled"])
@pytest.mark.parametrize("case", [c[0] for c in CASES if c[0] in ("llamagen-eval", "testbed")])
def test_logits_step(benchmark, case, provider):
    _, batch, drafts, vocab, cfg, temperature, top_k, top_p = next(c for c in CASES if c[0] == case)
    fns = providers(make_inputs(batch, drafts, vocab, cfg, temperature, top_k, top_p))
    benchmark(fns[provider])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where inputs live and the kernels run (cuda: the CUDA backend, else compiled Triton)")
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="seconds of timing shared by all cases (each still gets at least a few rounds)")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="comma-separated case names, of: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--rounds", type=int, default=60, help="at most this many interleaved rounds per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (immune to preemption; use with --threads 1)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    known = {c[0]: c for c in CASES}
    unknown = [n for n in args.cases.split(",") if n not in known]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; known: {list(known)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible")
    if args.rounds < 1 or not args.budget_s > 0:
        parser.error("--rounds must be >= 1 and --budget-s > 0")
    torch.set_num_threads(args.threads)
    run(5 if args.quick else args.rounds, args.out, [known[n] for n in args.cases.split(",")], clock=args.clock,
        device=args.device, budget_s=args.budget_s)


if __name__ == "__main__":
    main()
