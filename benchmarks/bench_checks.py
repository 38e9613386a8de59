"""Cost of the auxiliary ops' value checks (docs/ALGORITHMS.md §3.8: the values each op reads, reported as row codes)
and of CSpD's accurate sums, at the testbed's sizes, on the CPU backend.

Target (issue "bad values"): the checks cost at most 5 % on each auxiliary op. The checks live inside the kernels, so
the cost is measured against a build without them: run this script once per tree and compare::

    PYTHONPATH=<tree without the checks>:<its python/> python benchmarks/bench_checks.py --label before --run 1
    PYTHONPATH=<this tree>:<its python/> python benchmarks/bench_checks.py --label after --run 1
    (... alternate more runs: the machine is shared and noisy ...)
    python benchmarks/bench_checks.py --report before after

Each run writes ``benchmarks/results/checks-<machine>-<label>-<run>.json`` (median µs per call over interleaved
rounds, ``validate=False`` and the default ``None``); ``--report`` writes ``checks-<machine>.md`` from the median of
each label's runs.
Sizes (docs/TESTBED.md): 1024 codes of dim 8, LANTERN's k = V // 16 = 64, GSD's window (4, 3) with the normalised
codebook as embeddings, B 16 x L 15 = 240 candidate rows; CSpD 64 tokens of dim 8 with max_tries 100, and one
D = 2^16 row set for the cost of the sums at large D.
"""

import argparse
import glob
import json
import os
import statistics
import time
from typing import Callable, Dict

import sys

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # PYTHONPATH picks the tree
import specdec_kernels as sk  # noqa: E402

from benchmarks.timing import machine_name  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
VOCAB, DIM, ROWS = 1024, 8, 240


def _cases() -> Dict[str, Callable[[object], object]]:
    g = torch.Generator().manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(VOCAB, DIM, generator=g), dim=-1)
    table = sk.neighbor_table(codebook, VOCAB // 16, backend="cpu")
    p = torch.softmax(torch.randn(ROWS, VOCAB, generator=g) * 3, -1)
    q = torch.softmax(torch.randn(ROWS, VOCAB, generator=g) * 3, -1)
    x = torch.multinomial(q, 1, generator=g).squeeze(1)

    def cspd(n, dim, tries):
        mu_p = torch.randn(n, dim, generator=g)
        sigma_p = torch.rand(n, dim, generator=g) + 0.5
        mu_q = mu_p + 0.3 * torch.randn(n, dim, generator=g)
        sigma_q = sigma_p * (1 + 0.1 * torch.rand(n, dim, generator=g))
        xs = mu_q + sigma_q * torch.randn(n, dim, generator=g)
        s = 0.01 * torch.randn(n, dim, generator=g)
        return (xs, mu_q, sigma_q, mu_p, sigma_p, s, torch.zeros(n, dim), torch.rand(n, generator=g),
                torch.rand(n, tries, dim, generator=g), torch.rand(n, tries, generator=g))

    small, large = cspd(64, DIM, 100), cspd(4, 2**16, 4)
    return {
        "neighbor_table | 1024 x 8, k 64": lambda v: sk.neighbor_table(codebook, VOCAB // 16, backend="cpu",
                                                                         validate=v),
        "lantern_relaxed_mass | 240 rows, k 64, delta 0.1": lambda v: sk.lantern_relaxed_mass(
            p, x, table, delta=0.1, backend="cpu", validate=v),
        "gsd_group_mass | 240 rows, q, window (4, 3), embeddings": lambda v: sk.gsd_group_mass(
            p, q, x, embeddings=codebook, rank_window=(4, 3), backend="cpu", validate=v),
        "cspd_verify | 64 tokens, D 8, K 100": lambda v: sk.cspd_verify(*small, backend="cpu", validate=v),
        "cspd_verify | 4 tokens, D 65536, K 4": lambda v: sk.cspd_verify(*large, backend="cpu", validate=v),
    }


def _median_us(calls: Dict[str, Callable[[], object]], rounds: int, budget_s: float) -> Dict[str, float]:
    """Median µs per call, interleaved rounds; each call repeated to fill about ``budget_s`` per round."""
    reps = {}
    for name, fn in calls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-7)))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps[name] * 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(label: str, run: int, rounds: int, budget_s: float) -> str:
    calls = {}
    for case, fn in _cases().items():
        for level in (False, None):
            calls[f"{case} | {level}"] = lambda fn=fn, level=level: fn(level)
    result = {"label": label, "machine": machine_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "median_us": _median_us(calls, rounds, budget_s)}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"checks-{machine_name()}-{label}-{run}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path


def report(labels, machine: str) -> str:
    runs: Dict[str, list] = {}
    for label in labels:
        for path in sorted(glob.glob(os.path.join(RESULTS, f"checks-{machine}-{label}-*.json"))):
            with open(path) as f:
                runs.setdefault(label, []).append(json.load(f)["median_us"])
        if label not in runs:
            raise SystemExit(f"no runs labelled {label!r} for machine {machine!r} in {RESULTS}")
    merged = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
    base, new = labels[0], labels[-1]
    lines = [f"# Cost of the auxiliary ops' value checks on {machine} (cpu backend, torch {torch.__version__})", "",
             f"Median µs per call over interleaved rounds, median of {len(runs[base])} / {len(runs[new])} alternating "
             f"runs; `{base}` is the tree without the checks, `{new}` the tree with them "
             f"(`benchmarks/bench_checks.py`). Change = {new} / {base} - 1.", "",
             f"| op | shape | validate | {base} | {new} | change |", "|---|---|---|---|---|---|"]
    for key in merged[base]:
        op, shape, level = key.split(" | ")
        b, n = merged[base][key], merged[new][key]
        lines.append(f"| {op} | {shape} | {level} | {b:.1f} | {n:.1f} | {(n / b - 1) * 100:+.1f} % |")
    path = os.path.join(RESULTS, f"checks-{machine}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="measure this tree and store the run under this label")
    parser.add_argument("--run", type=int, default=1, help="run number of this label")
    parser.add_argument("--report", nargs="+", help="labels to compare (the first is the baseline)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per case per round")
    parser.add_argument("--machine", default=None, help="machine name of the runs to report (default: this one)")
    args = parser.parse_args()
    if args.label:
        print("wrote", measure(args.label, args.run, args.rounds, args.budget))
    if args.report:
        print("wrote", report(args.report, args.machine or machine_name()))


if __name__ == "__main__":
    main()
