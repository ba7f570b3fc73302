"""Benchmark the anchored reducer: fit time and per-point transform latency.

Fits on 1k / 10k / 50k synthetic 100-d embeddings (calibration.synthetic, the
8 RAVDESS classes), then times single-row transforms (the streaming call,
``reducer.transform(x[None, :])``) for the fast path and for UMAP's own
transform, and measures their agreement (CCC) on held-out points. Writes
docs/benchmarks/reducer.json and the table in docs/reducer.md (between the
bench markers). Run it with ``nice``; it takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from calibration import metrics as M
from calibration.anchors import ANCHOR_SETS
from calibration.reducer import AnchoredReducer
from calibration.synthetic import make_clusters

REPO = Path(__file__).resolve().parents[1]

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def percentiles_ms(times: list[float]) -> dict:
    t = np.asarray(times) * 1e3
    return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)),
            "p99": float(np.percentile(t, 99)), "n": int(len(t))}


def time_single_rows(fn, rows: np.ndarray, n: int, desc: str | None = None) -> tuple[list[float], list[float]]:
    """(wall-clock, this thread's CPU time) per call of ``fn(x[None, :])``.

    CPU time is what the call costs; wall-clock adds the time spent waiting for
    a core, which on a shared machine is set by the other jobs.
    """
    from tqdm import tqdm

    wall, cpu = [], []
    for i in tqdm(range(n), desc=desc, leave=False, disable=desc is None):
        x = rows[i % len(rows)][None, :]
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(x)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def cpu_pressure() -> str | None:
    """Linux PSI line 'some avg10=.. avg60=..': share of time runnable tasks waited for a CPU."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None


def bench_size(n: int, n_held: int, fast_calls: int, umap_calls: int, seed: int,
               sweep: list[int] | None = None) -> dict:
    anchors = dict(ANCHOR_SETS["ravdess"].anchors)
    X, y = make_clusters(n + n_held, anchors, seed=seed)
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    reducer = AnchoredReducer(anchors="ravdess", random_state=0)
    t0 = time.perf_counter()
    reducer.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0

    # Warm-up: the first UMAP transform compiles numba code / builds search state.
    reducer.transform(Xte[:2], method="umap")
    reducer.warm_up(50)
    fast_wall, fast_cpu = time_single_rows(reducer.transform, Xte, fast_calls)
    umap_wall, umap_cpu = time_single_rows(lambda x: reducer.transform(x, method="umap"), Xte, umap_calls,
                                           desc=f"UMAP single rows, n={n}")
    t1 = time.perf_counter()
    fast = reducer.transform(Xte)
    fast_batch_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    slow = reducer.transform(Xte, method="umap")
    umap_batch_s = time.perf_counter() - t1
    out = {
        "n_train": n,
        "n_held_out": n_held,
        "fit_seconds": fit_s,
        "fast_reference_points": int(len(reducer.ref_index_)),
        "fast_single_row_ms": percentiles_ms(fast_wall),
        "fast_single_row_cpu_ms": percentiles_ms(fast_cpu),
        "umap_single_row_ms": percentiles_ms(umap_wall),
        "umap_single_row_cpu_ms": percentiles_ms(umap_cpu),
        "fast_batch_ms_per_point": fast_batch_s / n_held * 1e3,
        "umap_batch_ms_per_point": umap_batch_s / n_held * 1e3,
        "ccc_fast_vs_umap": {"valence": M.ccc(fast[:, 0], slow[:, 0]), "arousal": M.ccc(fast[:, 1], slow[:, 1])},
        "max_abs_diff_fast_vs_umap": float(np.max(np.abs(fast - slow))),
        "anchor_agreement_umap": M.anchor_agreement(slow, yte, anchors),
        "anchor_agreement_fast": M.anchor_agreement(fast, yte, anchors),
        "train_drift_mean": {k: v["mean"] for k, v in reducer.drift_.items()},
        "cpu_pressure": cpu_pressure(),
    }
    if sweep:
        # Same fit, other caps on the fast path's search set: cost vs agreement.
        rows = []
        for cap in sweep:
            reducer.set_params(fast_max_reference=cap)
            reducer._build_fast_index(np.random.default_rng(0))
            reducer.warm_up(50)
            wall, cpu = time_single_rows(reducer.transform, Xte, fast_calls)
            f = reducer.transform(Xte)
            rows.append({
                "fast_max_reference": cap,
                "reference_points": int(len(reducer.ref_index_)),
                "single_row_ms": percentiles_ms(wall),
                "single_row_cpu_ms": percentiles_ms(cpu),
                "ccc_fast_vs_umap": {"valence": M.ccc(f[:, 0], slow[:, 0]), "arousal": M.ccc(f[:, 1], slow[:, 1])},
            })
        out["reference_cap_sweep"] = rows
    return out


def markdown_table(res: dict) -> str:
    rows = [
        "| training points | fit (s) | fast p50 / p95 CPU (ms) | fast p50 / p95 wall (ms) "
        "| UMAP p50 / p95 CPU (ms) | UMAP p50 / p95 wall (ms) | p50 ratio UMAP/fast (CPU) "
        "| fast search set | CCC fast vs UMAP (valence / arousal) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["sizes"]:
        fc, fw = r["fast_single_row_cpu_ms"], r["fast_single_row_ms"]
        uc, uw = r["umap_single_row_cpu_ms"], r["umap_single_row_ms"]
        c = r["ccc_fast_vs_umap"]
        rows.append(
            f"| {r['n_train']:,} | {r['fit_seconds']:.1f} | {fc['p50']:.3f} / {fc['p95']:.3f} "
            f"| {fw['p50']:.3f} / {fw['p95']:.3f} | {uc['p50']:.1f} / {uc['p95']:.1f} "
            f"| {uw['p50']:.1f} / {uw['p95']:.1f} | {uc['p50'] / fc['p50']:.0f}x | {r['fast_reference_points']:,} "
            f"| {c['valence']:.4f} / {c['arousal']:.4f} |"
        )
    base = res["sizes"][0]["fit_seconds"]
    ratios = ", ".join(f"{r['n_train'] / 1000:g}k: {r['fit_seconds'] / base:.1f}x" for r in res["sizes"])
    env = res["environment"]
    rows += [
        "",
        f"Fit time relative to the smallest size: {ratios}. Numba JIT warm-up fits in a fresh process "
        f"(excluded above): {res['jit_warmup_fit_seconds']:.1f} s.",
        f"Single-row latency: {res['fast_calls']} fast and {res['umap_calls']} UMAP calls of "
        "`transform(x[None, :])` per size after warm-up; CPU = this thread's CPU time per call, wall = "
        f"wall-clock per call. Agreement on {res['sizes'][0]['n_held_out']} held-out points per size.",
        f"Machine: {env['cpu_count']} CPU cores shared with other jobs; load average "
        f"{env['loadavg_start'][0]:.1f} at start and {env['loadavg_end'][0]:.1f} at end; CPU pressure "
        f"at the end `{env.get('cpu_pressure_end')}`; niceness {env['niceness']}; Python {env['python']}, "
        f"numpy {env['numpy']}, umap-learn {env['umap_learn']}.",
    ]
    last = res["sizes"][-1]
    if "reference_cap_sweep" in last:
        rows += [
            "",
            f"Fast-path search-set cap at {last['n_train']:,} training points (same fit):",
            "",
            "| fast_max_reference | search set | CPU p50 / p95 (ms) | wall p50 / p95 (ms) "
            "| CCC vs UMAP (valence / arousal) |",
            "|---:|---:|---:|---:|---|",
        ]
        for w in last["reference_cap_sweep"]:
            c, wc, ww = w["ccc_fast_vs_umap"], w["single_row_cpu_ms"], w["single_row_ms"]
            rows.append(f"| {w['fast_max_reference']:,} | {w['reference_points']:,} "
                        f"| {wc['p50']:.3f} / {wc['p95']:.3f} | {ww['p50']:.3f} / {ww['p95']:.3f} "
                        f"| {c['valence']:.4f} / {c['arousal']:.4f} |")
    rows += ["", f"Reproduce: `nice python benchmarks/bench_reducer.py` (took {res['total_seconds'] / 60:.0f} min)."]
    return "\n".join(rows)


def write_marked_section(md_path: Path, body: str, start: str = START, end: str = END,
                         title: str = "Stage II reducer") -> None:
    """Replace what lies between the ``start`` and ``end`` markers of a markdown file (added when missing)."""
    text = md_path.read_text() if md_path.is_file() else f"# {title}\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    md_path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="training set sizes")
    ap.add_argument("--held-out", type=int, default=1000, help="held-out points per size for agreement")
    ap.add_argument("--fast-calls", type=int, default=2000, help="single-row fast transforms timed per size")
    ap.add_argument("--umap-calls", type=int, default=100, help="single-row UMAP transforms timed per size")
    ap.add_argument("--cap-sweep", type=int, nargs="*", default=[1024, 2048, 4096, 10000],
                    help="fast_max_reference values tried on the largest size")
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "reducer.json", help="JSON output")
    ap.add_argument("--markdown", type=Path, default=REPO / "docs" / "reducer.md",
                    help="markdown file whose bench section gets the table")
    args = ap.parse_args(argv)

    import sklearn
    import umap

    t_all = time.perf_counter()
    env = {
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "niceness": os.nice(0),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "umap_learn": umap.__version__,
        "platform": platform.platform(),
    }
    # Warm-up fits (exact and NN-descent neighbour paths, below and above 4096
    # points) so numba's JIT compile is not charged to the timed rows.
    anchors = dict(ANCHOR_SETS["ravdess"].anchors)
    t0 = time.perf_counter()
    for n_warm in (300, 4200):
        Xw, yw = make_clusters(n_warm + 10, anchors, seed=99)
        AnchoredReducer(anchors="ravdess", random_state=0, n_epochs=5).fit(Xw[:n_warm], yw[:n_warm]).transform(
            Xw[n_warm:], method="umap")
    jit_s = time.perf_counter() - t0

    sizes = []
    for n in args.sizes:
        print(f"n={n} ...", flush=True)
        r = bench_size(n, args.held_out, args.fast_calls, args.umap_calls, seed=n,
                       sweep=args.cap_sweep if n == max(args.sizes) else None)
        print(json.dumps({k: r[k] for k in ("fit_seconds", "fast_single_row_cpu_ms", "fast_single_row_ms",
                                             "umap_single_row_cpu_ms", "ccc_fast_vs_umap")}), flush=True)
        sizes.append(r)
    env["loadavg_end"] = list(os.getloadavg())
    env["cpu_pressure_end"] = cpu_pressure()
    res = {
        "environment": env,
        "jit_warmup_fit_seconds": jit_s,
        "fast_calls": args.fast_calls,
        "umap_calls": args.umap_calls,
        "reducer_params": AnchoredReducer(anchors="ravdess", random_state=0).get_params(),
        "sizes": sizes,
        "total_seconds": time.perf_counter() - t_all,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    table = markdown_table(res)
    write_marked_section(args.markdown, table)
    print(table)


if __name__ == "__main__":
    main()
