"""One Jacobi step (SJD / GSD) from raw logits: ours (``jacobi_step``: verification and the Jacobi refresh fused,
each logits row processed once where it is read) against the path the decoding loop ran before it: process every
row (the library's ``process_logits``, or the float32 pipeline eager / ``torch.compile``d), ``verify_chain`` on the
CPU kernel, then the refresh in eager torch ops (gather the target rows after the accepted prefix, sample them,
fresh random inits with one-hot q, keep the new window).

All providers get the same raw logits (a CFG-doubled batch), window, q and uniforms; they are timed interleaved
(one call of each per round) and the medians compared, so machine noise hits them alike.

Usage: ``python -m benchmarks.bench_jacobi [--quick] [--threads N] [--clock wall|cpu] [--out DIR]`` writes
``<machine>-jacobi.csv`` / ``.md``; ``pytest benchmarks/bench_jacobi.py`` runs the cases as pytest-benchmark tests.
"""

import argparse
import csv
import os
import platform
from typing import Callable, Dict, List

import pytest
import torch

import specdec_kernels as sk

from .bench_logits import eager_processing, measure_side_by_side
from .timing import machine_name

#: (name, batch, drafts L, vocab, cfg_scale, top_k)
CASES = [
    ("testbed", 8, 15, 1024, 3.0, 128),
    ("testbed-b1", 1, 15, 1024, 3.0, 128),
    ("llamagen", 8, 15, 16384, 4.0, 0),
    ("llamagen-topk", 8, 15, 16384, 4.0, 2000),
]


def make_inputs(batch: int, drafts: int, vocab: int, cfg_scale: float, top_k: int, seed: int = 0) -> Dict:
    """A mid-image Jacobi window: the first half of the entries refreshed last step (q = the processed rows of
    nearby logits, drafts drawn from them), the rest fresh random inits (one-hot q); uniforms for every draw."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * batch, drafts + 1, vocab, generator=gen) * 2.0
    near = logits[:batch, 1:] + torch.randn(batch, drafts, vocab, generator=gen) * 0.5
    q = sk.process_logits(near, top_k=top_k)
    refreshed = torch.arange(drafts) < drafts // 2
    init = torch.randint(0, vocab, (batch, drafts), generator=gen)
    drawn = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(batch, drafts)
    window = torch.where(refreshed, drawn, init)
    q = torch.where(refreshed[:, None], q, torch.nn.functional.one_hot(init, vocab).float())
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    return {"logits": logits, "window": window, "q": q.contiguous(), "u_accept": rand(batch, drafts),
            "u_sample": rand(batch), "u_draft": rand(batch, drafts), "u_init": rand(batch, drafts),
            "cfg_scale": cfg_scale, "top_k": top_k}


def eager_refresh(p, window, q, accept_len, num_drafts, u_draft, u_init):
    """The decoding loop's refresh before the fused step (SJD's eager path, random inits)."""
    width = window.shape[1]
    vocab = p.shape[-1]
    j = torch.arange(width)
    src = (accept_len[:, None] + 1 + j[None, :]).clamp_max(width)
    refreshed = j[None, :] < (num_drafts - accept_len)[:, None]
    rows = p.gather(1, src[:, :, None].expand(-1, -1, vocab))
    empty = torch.zeros(rows.shape[0] * width, 0, dtype=torch.int64)
    _, drawn = sk.verify_chain(rows.reshape(-1, 1, vocab), None, empty, torch.zeros(rows.shape[0] * width, 0),
                               u_draft.reshape(-1), num_drafts=torch.zeros(rows.shape[0] * width, dtype=torch.int64),
                               validate=False)
    new_window = torch.where(refreshed, drawn.view_as(src), 0)
    new_q = rows.mul_(refreshed[:, :, None])
    fresh = ~refreshed
    init = (u_init * vocab).long().clamp_max(vocab - 1)
    new_window = torch.where(fresh, init, new_window)
    new_q.masked_fill_(fresh[:, :, None], 0.0).scatter_add_(2, new_window[:, :, None], fresh[:, :, None].float())
    keep = torch.ones(window.shape[0], dtype=torch.bool)
    return torch.where(keep[:, None], new_window, window), torch.where(keep[:, None, None], new_q, q)


def providers(inputs: Dict) -> Dict[str, Callable[[], object]]:
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(eager_processing, dynamic=False)
    cfg, top_k = inputs["cfg_scale"], inputs["top_k"]
    batch, width = inputs["window"].shape
    n = torch.full((batch,), width, dtype=torch.int64)

    def ours():
        out = sk.jacobi_step(inputs["logits"], inputs["window"], inputs["q"], inputs["u_accept"], inputs["u_sample"],
                             inputs["u_draft"], u_init=inputs["u_init"], cfg_scale=cfg, top_k=top_k, backend="cpu",
                             validate=False)
        return out.accept_len, out.window

    def before(process):
        def run():
            p = process(inputs["logits"])
            accept_len, _ = sk.verify_chain(p, inputs["q"], inputs["window"], inputs["u_accept"], inputs["u_sample"],
                                            backend="cpu", validate=False)
            window, _ = eager_refresh(p, inputs["window"], inputs["q"], accept_len, n, inputs["u_draft"],
                                      inputs["u_init"])
            return accept_len, window
        return run

    return {
        "ours": ours,
        "library_process": before(lambda x: sk.process_logits(x, cfg_scale=cfg, top_k=top_k)),
        "eager": before(lambda x: eager_processing(x, cfg, 1.0, top_k, 1.0)),
        "compiled": before(lambda x: compiled(x, cfg, 1.0, top_k, 1.0)),
    }


def run(rounds: int, out_dir: str, cases=CASES, clock: str = "wall") -> List[Dict]:
    import time

    rows = []
    for name, batch, drafts, vocab, cfg, top_k in cases:
        inputs = make_inputs(batch, drafts, vocab, cfg, top_k)
        fns = providers(inputs)
        ours_accept, ours_window = fns["ours"]()
        base_accept, base_window = fns["library_process"]()
        timings = measure_side_by_side(fns, rounds, clock=time.process_time if clock == "cpu" else time.perf_counter)
        ours = timings["ours"]["median_us"]
        rows.append({
            "case": name, "batch": batch, "drafts": drafts, "vocab": vocab, "cfg_scale": cfg, "top_k": top_k,
            "mean_accept_len": round(ours_accept.double().mean().item(), 2),
            "same_tokens_as_before": bool(torch.equal(ours_accept, base_accept) and torch.equal(ours_window, base_window)),
            **{f"{p}_median_us": round(t["median_us"], 1) for p, t in timings.items()},
            **{f"speedup_vs_{p}": round(t["median_us"] / ours, 2) for p, t in timings.items() if p != "ours"},
            "rounds": timings["ours"]["rounds"],
        })
        print(f"{name}: ours {ours:.0f} us; " + ", ".join(
            f"{p} {t['median_us']:.0f} us ({t['median_us'] / ours:.2f}x)" for p, t in timings.items() if p != "ours"),
            flush=True)
    write(rows, out_dir, clock)
    return rows


def write(rows: List[Dict], out_dir: str, clock: str = "wall"):
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{machine_name()}-jacobi" + ("-cputime" if clock == "cpu" else ""))
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# One Jacobi step from raw logits ({machine_name()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {'process CPU time' if clock == 'cpu' else 'wall time'})",
        "",
        "ours = `jacobi_step` (verification and the Jacobi refresh in one pass per row, each logits row processed "
        "once); the other columns process every row first (`library_process` = `process_logits`, `eager` / "
        "`compiled` = the float32 pipeline eager or `torch.compile`d), then `verify_chain` (CPU kernel) and the "
        "eager refresh the decoding loop ran before. Medians of interleaved rounds in µs; × = their median / ours. "
        "`same tokens` compares ours with the library-processing path (accept lengths and the new window).",
        "",
        "| case | B | L | V | CFG | top-k | mean accept | same tokens | ours µs | library_process µs | eager µs "
        "| compiled µs | × library_process | × eager | × compiled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['batch']} | {r['drafts']} | {r['vocab']} | {r['cfg_scale']} | {r['top_k']} "
                     f"| {r['mean_accept_len']} | {'yes' if r['same_tokens_as_before'] else 'NO'} "
                     f"| {r['ours_median_us']:.0f} | {r['library_process_median_us']:.0f} | {r['eager_median_us']:.0f} "
                     f"| {r['compiled_median_us']:.0f} | {r['speedup_vs_library_process']} | {r['speedup_vs_eager']} "
                     f"| {r['speedup_vs_compiled']} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.skipif("cpu" not in sk.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("provider", ["ours", "library_process", "eager"])
def test_jacobi_step(benchmark, provider):
    _, batch, drafts, vocab, cfg, top_k = CASES[0]
    benchmark(providers(make_inputs(batch, drafts, vocab, cfg, top_k))[provider])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=60, help="at most this many interleaved rounds per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (immune to preemption; use with --threads 1)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(5 if args.quick else args.rounds, args.out, clock=args.clock)


if __name__ == "__main__":
    main()
