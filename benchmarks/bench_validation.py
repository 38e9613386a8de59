"""Cost of the validation levels (docs/ALGORITHMS.md §3.8) on the hot path: ``validate=None`` (the default: shape
checks and the kernel's row codes), ``True`` (full value checks, one host synchronisation) and ``False``.

Target (issue "hot path"): the default costs at most 25 % over ``validate=False`` for ``verify_chain`` at B = 8,
L = 15, V = 4096 on the CPU backend. ``pytest benchmarks/bench_validation.py --benchmark-only`` times the three
levels; ``python -m benchmarks.bench_validation`` prints the overhead and writes
``benchmarks/results/validation-<machine>.md``. Timings on a shared machine are noisy: interleaved rounds, medians.
"""

import argparse
import os
import time
from typing import Dict

import pytest
import torch

import specdec_kernels as sk

from benchmarks.inputs import tree_parents, verify_chain_inputs
from benchmarks.timing import machine_name

LEVELS = {"False": False, "None (default)": None, "True": True}
BACKEND = "cpu"


def _chain(with_q=True):
    return verify_chain_inputs(8, 15, 4096, with_q=with_q)


def _tree(nodes=26, vocab=4096):
    gen = torch.Generator().manual_seed(0)
    parents = tree_parents(nodes)[None].repeat(8, 1)
    p = torch.softmax(torch.randn(8, nodes, vocab, generator=gen) * 3, -1)
    tokens = p.argmax(-1).gather(1, parents.clamp_min(0))
    return dict(p=p, q=None, tree_tokens=tokens, parents=parents, u_accept=torch.rand(8, nodes, generator=gen),
                u_sample=torch.rand(8, generator=gen))


@pytest.mark.skipif(BACKEND not in sk.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("with_q", [True, False])
def test_verify_chain_validation_level(benchmark, level, with_q):
    c = _chain(with_q)
    benchmark(lambda: sk.verify_chain(**c, backend=BACKEND, validate=LEVELS[level]))


@pytest.mark.skipif(BACKEND not in sk.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("level", list(LEVELS))
def test_verify_tree_validation_level(benchmark, level):
    c = _tree()
    benchmark(lambda: sk.verify_tree(**c, backend=BACKEND, validate=LEVELS[level]))


def interleaved_medians(calls: Dict[str, callable], rounds: int, reps: int) -> Dict[str, float]:
    """Median microseconds per call of each entry, timed in interleaved rounds (so drifting load hits all)."""
    samples = {name: [] for name in calls}
    for fn in calls.values():
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps * 1e6)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    lines = [f"# Validation cost on {machine_name()} ({BACKEND} backend; torch {torch.__version__})", "",
             "Median µs per call over interleaved rounds; overhead relative to `validate=False`.", "",
             "| op | shape | q | validate=False | None (default) | True | default overhead | True overhead |",
             "|---|---|---|---|---|---|---|---|"]
    cases = [("verify_chain", "B 8, L 15, V 4096", "q", _chain(True), sk.verify_chain),
             ("verify_chain", "B 8, L 15, V 4096", "one-hot", _chain(False), sk.verify_chain),
             ("verify_tree", "B 8, M 26, V 4096", "one-hot", _tree(), sk.verify_tree)]
    for op, shape, q, case, fn in cases:
        calls = {name: (lambda level=level, case=case, fn=fn: fn(**case, backend=BACKEND, validate=level))
                 for name, level in LEVELS.items()}
        med = interleaved_medians(calls, args.rounds, args.reps)
        base = med["False"]
        row = (f"| {op} | {shape} | {q} | {base:.1f} | {med['None (default)']:.1f} | {med['True']:.1f} | "
               f"{(med['None (default)'] / base - 1) * 100:+.1f} % | {(med['True'] / base - 1) * 100:+.1f} % |")
        print(row, flush=True)
        lines.append(row)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"validation-{machine_name()}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
