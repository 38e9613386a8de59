"""Sweep the verification ops over image-model shapes and compare providers side by side in one run.

Providers: ``ours`` (the compiled backend for the device: C++ CPU kernels, or CUDA kernels on a GPU, called
with ``validate=False`` as a decoding loop would), ``triton`` (GPU only; the interpreter is not timed),
``reference`` (eager pure-PyTorch semantics), ``compiled`` (``torch.compile`` of the reference) and
``flashinfer`` (``flashinfer.sampling.chain_speculative_sampling``, exact chain with explicit q; optional: where it
does not import, its rows say "not available").

Writes ``benchmarks/results/<machine>.csv``, ``.md`` and ``.png`` (speed-up of ours over each baseline); the CSV and
MD again after every measurement, so a run cut off by its time limit keeps what it measured. ``--budget-s`` bounds
the sweep: shapes not started within it are listed as not run, peers not started within it say so in their rows.
Usage: ``python -m benchmarks.kernels [--quick] [--device cuda] [--budget-s S] [--out DIR]``.
"""

import argparse
import csv
import itertools
import math
import os
import platform
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

import specdec_kernels as sk
from specdec_kernels import reference

from .inputs import codebook_inputs, neighbor_inputs, verify_chain_inputs, verify_tree_inputs
from .timing import machine_name, measure

#: Peak HBM bandwidth (vendor specs, bytes/s) for the floor of a read-once kernel.
HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def _hbm_peak() -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in HBM_PEAK.items() if key in name), None)


def _commit() -> str:
    """The commit measured: ``$SPECDEC_COMMIT`` where the caller knows it (the GPU check passes it, the lent machine
    has no ``.git``), else git's."""
    if os.environ.get("SPECDEC_COMMIT"):
        return os.environ["SPECDEC_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Sweep:
    def __init__(self, device: str, min_time_s: float, budget_s: float = math.inf,
                 on_record: Optional[Callable[[], None]] = None, skip: Sequence[str] = ()):
        self.device = device
        self.skip = set(skip)  # providers left out (e.g. "compiled": its cold compiles take most of a short run)
        self.min_time_s = min_time_s
        self.deadline = time.monotonic() + budget_s
        self.on_record = on_record  # called after every measured shape (writes the results so far)
        self.rows: List[Dict] = []
        self.not_run: List[str] = []
        self.ours = "cuda" if device == "cuda" and "cuda" in sk.available_backends() else (
            "triton" if device == "cuda" else "cpu")
        self._compiled: Dict[str, Callable] = {}

    def compiled(self, name: str) -> Callable:
        """torch.compile of the reference, specialised per shape (the recompile limit is raised so that a sweep
        never silently falls back to eager)."""
        if name not in self._compiled:
            self._compiled[name] = torch.compile(getattr(reference, name), dynamic=False)
        return self._compiled[name]

    def record(self, op: str, config: Dict, providers: Dict[str, Callable[[], object]], bytes_read: int = 0):
        if time.monotonic() > self.deadline:
            self.not_run.append(f"{op} {_config(config)}")
            print(f"  {op} {config}: not run (time budget spent)")
            return
        ours, peak = None, _hbm_peak()
        for provider, fn in providers.items():  # "ours" first: the others' rows give their time / ours
            if provider in self.skip:
                continue
            row = {"op": op, **config, "provider": provider}
            if isinstance(fn, Unavailable):
                row["note"] = f"not available ({fn.reason})"
            elif provider != "ours" and time.monotonic() > self.deadline:
                row["note"] = "not run (time budget spent)"
            else:
                try:
                    t = measure(fn, self.device, min_time_s=self.min_time_s)
                except Exception as exc:  # a peer that does not run here is reported, not fatal
                    row["note"] = f"failed ({type(exc).__name__}: {exc})"[:160]
                else:
                    row.update({k: round(v, 2) for k, v in t.items()})
                    ours = t["median_us"] if provider == "ours" else ours
                    row["speedup_of_ours"] = round(t["median_us"] / ours, 2) if ours else ""
                    if peak and bytes_read:
                        floor = bytes_read / peak * 1e6
                        row["hbm_floor_us"] = round(floor, 2)
                        row["x_floor"] = round(t["median_us"] / floor, 2)
            if "note" in row:
                print(f"  {op} {config} {provider}: {row['note']}")
            self.rows.append(row)
            if self.on_record is not None:  # after every provider: a run cut off keeps what it measured
                self.on_record()


class Unavailable:
    """A provider that cannot run here (e.g. FlashInfer not installed): its row says why instead of a time."""

    def __init__(self, reason: str):
        self.reason = reason


def sweep_verify_chain(s: Sweep, quick: bool):
    shapes = [(8, 15, 4096)] if quick else list(itertools.product((1, 8, 32), (8, 15, 16), (1024, 4096, 16384)))
    for batch, drafts, vocab in tqdm(shapes, desc="verify_chain"):
        for with_q in (True, False):
            c = verify_chain_inputs(batch, drafts, vocab, with_q=with_q, device=s.device)
            providers = {
                "ours": lambda: sk.verify_chain(**c, backend=s.ours, validate=False),
                "reference": lambda: reference.verify_chain(**c),
                "compiled": lambda: s.compiled("verify_chain")(**c),
            }
            if s.device == "cuda" and s.ours != "triton" and "triton" in sk.available_backends():
                providers["triton"] = lambda: sk.verify_chain(**c, backend="triton", validate=False)
            if with_q:
                providers["flashinfer"] = _flashinfer_chain(c)
            bytes_read = c["p"].numel() * c["p"].element_size() * (2 if with_q else 1)
            s.record("verify_chain", {"batch": batch, "drafts": drafts, "vocab": vocab, "q": with_q}, providers,
                     bytes_read)


def _flashinfer_chain(c):
    """FlashInfer's exact chain verification on the same inputs, or :class:`Unavailable` where it does not import
    (it is optional: not installed on the CPU machines, nor preinstalled on the lent GPU machine)."""
    try:
        from flashinfer.sampling import chain_speculative_sampling
    except Exception as exc:  # ImportError, or a broken install failing at import: either way, not available
        return Unavailable(f"{type(exc).__name__}: {exc}"[:120])
    draft = c["draft"].int()
    return lambda: chain_speculative_sampling(c["q"], draft, c["p"])


def sweep_verify_tree(s: Sweep, quick: bool):
    shapes = [(8, 25, 4096)] if quick else list(itertools.product((1, 8), (25, 64), (4096, 16384)))
    for batch, nodes, vocab in tqdm(shapes, desc="verify_tree"):
        c = verify_tree_inputs(batch, nodes, vocab, device=s.device)
        s.record("verify_tree", {"batch": batch, "nodes": nodes, "vocab": vocab, "q": False}, {
            "ours": lambda: sk.verify_tree(**c, backend=s.ours, validate=False),
            "reference": lambda: reference.verify_tree(**c),
        }, c["p"].numel() * c["p"].element_size())


def sweep_relaxed(s: Sweep, quick: bool):
    vocabs = (4096,) if quick else (4096, 16384)
    for vocab in tqdm(vocabs, desc="relaxed masses"):
        c = verify_chain_inputs(8, 15, vocab, with_q=False, device=s.device)
        rows_p, rows_x = c["p"][:, :15].reshape(-1, vocab), c["draft"].reshape(-1)
        table = neighbor_inputs(vocab, 100, s.device)
        cfg = {"batch": 120, "vocab": vocab}
        s.record("lantern_relaxed_mass", {**cfg, "k": 100}, {
            "ours": lambda: sk.lantern_relaxed_mass(rows_p, rows_x, table, delta=0.1, backend=s.ours, validate=False),
            "reference": lambda: reference.lantern_relaxed_mass(rows_p, rows_x, table, delta=0.1),
            "compiled": lambda: s.compiled("lantern_relaxed_mass")(rows_p, rows_x, table, delta=0.1),
        })
        s.record("gsd_group_mass", cfg, {
            "ours": lambda: sk.gsd_group_mass(rows_p, None, rows_x, backend=s.ours, validate=False),
            "reference": lambda: reference.gsd_group_mass(rows_p, None, rows_x),
            "compiled": lambda: s.compiled("gsd_group_mass")(rows_p, None, rows_x),
        })
        s.record("verify_chain[gsd]", {"batch": 8, "drafts": 15, "vocab": vocab, "q": False}, {
            "ours": lambda: sk.verify_chain(**c, method="gsd", backend=s.ours, validate=False),
            "reference": lambda: reference.verify_chain(**c, method="gsd"),
            "compiled": lambda: s.compiled("verify_chain")(**c, method="gsd"),
        })
        s.record("verify_chain[lantern]", {"batch": 8, "drafts": 15, "vocab": vocab, "q": False, "k": 100}, {
            "ours": lambda: sk.verify_chain(**c, method="lantern", neighbors=table, delta=0.1, backend=s.ours,
                                            validate=False),
            "reference": lambda: reference.verify_chain(**c, method="lantern", neighbors=table, delta=0.1),
        })


def sweep_neighbor_table(s: Sweep, quick: bool):
    shapes = [(4096, 16)] if quick else [(4096, 16), (16384, 16), (16384, 1000)]
    for num_codes, k in tqdm(shapes, desc="neighbor_table"):
        cb = codebook_inputs(num_codes, 8, s.device)
        providers = {"ours": lambda: sk.neighbor_table(cb, k, backend=s.ours)}
        if num_codes <= 4096 or s.device == "cuda":
            providers["reference"] = lambda: reference.neighbor_table(cb, k)
        saved, s.min_time_s = s.min_time_s, 0.0  # seconds-long calls: a handful of repetitions suffices
        s.record("neighbor_table", {"vocab": num_codes, "dim": 8, "k": k}, providers)
        s.min_time_s = saved


def write_results(rows: List[Dict], out_dir: str, name: str, not_run: Sequence[str] = (), plot: bool = True) -> str:
    os.makedirs(out_dir, exist_ok=True)
    header = ["op", "batch", "drafts", "nodes", "vocab", "dim", "k", "q", "provider", "median_us", "p20_us", "p80_us",
              "reps", "speedup_of_ours", "hbm_floor_us", "x_floor", "note"]
    meta = (f"machine={name}; torch={torch.__version__}; cuda={torch.version.cuda}; threads={torch.get_num_threads()};"
            f" cpu={platform.processor() or platform.machine()}; commit={_commit()}; date={time.strftime('%Y-%m-%d')}")
    base = os.path.join(out_dir, name)
    with open(base + ".csv", "w", newline="") as f:
        f.write(f"# {meta}\n")
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(base + ".md", "w") as f:
        f.write(f"# Kernel microbenchmarks: {name}\n\n{meta}\n\n")
        f.write("Median microseconds per call (20th-80th percentile); `x ours` = that provider's time / ours.\n\n")
        f.write(_markdown(rows))
        if not_run:
            f.write(f"\nNot run (time budget spent): {'; '.join(not_run)}.\n")
    if plot:
        _plot(rows, base + ".png", name)
    return base


def _config(row: Dict) -> str:
    keys = ("batch", "drafts", "nodes", "vocab", "k", "q")
    return " ".join(f"{k}={row[k]}" for k in keys if k in row and row[k] != "")


def _markdown(rows: List[Dict]) -> str:
    groups: Dict[tuple, Dict[str, Dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], _config(r)), {})[r["provider"]] = r
    providers = [p for p in ("ours", "triton", "reference", "compiled", "flashinfer")
                 if any(p in g for g in groups.values())]
    lines = ["| op | shape | " + " | ".join(providers) + " |", "|---|---|" + "---|" * len(providers)]
    for (op, cfg), g in groups.items():
        cells = []
        for p in providers:
            r = g.get(p)
            if r is None:
                cells.append("n/a")
                continue
            if r.get("note"):
                cells.append(r["note"].split(" (")[0])
                continue
            cell = f"{r['median_us']:.1f} ({r['p20_us']:.1f}-{r['p80_us']:.1f})"
            if p != "ours" and r.get("speedup_of_ours"):
                cell += f", x ours {r['speedup_of_ours']}"
            if r.get("x_floor"):
                cell += f", {r['x_floor']}x floor"
            cells.append(cell)
        lines.append(f"| {op} | {cfg} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: List[Dict], path: str, name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chain = [r for r in rows if r["op"] == "verify_chain" and r["provider"] != "ours" and r.get("speedup_of_ours")
             and not r.get("note")]
    if not chain:
        return
    fig, ax = plt.subplots(figsize=(12, 4.8))
    providers = sorted({r["provider"] for r in chain})
    short = lambda r: f"B{r['batch']} L{r['drafts']} V{r['vocab'] // 1024}k {'q' if r['q'] else '1-hot'}"  # noqa: E731
    labels = list(dict.fromkeys(short(r) for r in chain))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        by_cfg = {short(r): r["speedup_of_ours"] for r in chain if r["provider"] == provider}
        ax.bar([j + i * width for j in range(len(labels))], [by_cfg.get(c, 0) for c in labels], width, label=provider)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylabel("time of provider / time of ours (higher = ours faster)")
    ax.set_title(f"verify_chain speed-up of ours, {name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape per op (about a minute on 2 CPU cores)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per provider and shape")
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="no new shape starts after this many seconds (the shapes left are listed as not run)")
    parser.add_argument("--skip", default="", help="comma-separated providers to leave out, e.g. compiled")
    parser.add_argument("--name", default=None, help="file stem (default: the machine's name, -quick with --quick)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible")
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    for limit in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 4096)
    name = args.name or machine_name() + ("-quick" if args.quick else "")
    skip = [p for p in args.skip.split(",") if p]
    if "ours" in skip:
        parser.error("--skip: 'ours' is what the other providers are compared with")
    s = Sweep(args.device, args.min_time, args.budget_s, skip=skip)
    s.on_record = lambda: write_results(s.rows, args.out, name, s.not_run, plot=False)
    for step in (sweep_verify_chain, sweep_verify_tree, sweep_relaxed, sweep_neighbor_table):
        step(s, args.quick)
    base = write_results(s.rows, args.out, name, s.not_run)
    print(_markdown(s.rows))
    print(f"wrote {base}.csv, {base}.md and {base}.png")


if __name__ == "__main__":
    main()
