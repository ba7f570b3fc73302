"""The store's two backends: points written per second, and what a killed writer loses.

For SQLite (a file in a temporary folder) and PostgreSQL (``--postgresql URL``,
else a throwaway local server started with the tests' helper, fsync on):

1. **sink**: ``StoreSink.point()`` as fast as the caller can, the writer
   thread committing whatever is queued in one ``write_batch`` (up to 1000
   points), as in a live session; points per second from the first ``point()``
   until ``close()`` has committed the last;
2. **one point per commit**: ``Store.write_batch(session, [point])`` in a loop,
   what a live session at speaking pace does (one commit per point);
3. **durability**: a separate process writes points through ``StoreSink`` at
   a live pace (``--pace`` points per second), logging each to a JSONL file
   just before handing it to the sink (as the monitor's ``--jsonl`` does); it
   is killed with SIGKILL at a random moment; the store is opened again and
   every emitted point missing from it counts as lost. The figure is the age,
   at the kill, of the oldest lost point (0 when none was lost), max over
   ``--trials`` kills.

    python benchmarks/bench_store.py                          # both backends (about 2 minutes)
    python benchmarks/bench_store.py --postgresql postgresql://me@db/bench --trials 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor.history.sink import StoreSink  # noqa: E402
from monitor.history.store import Store  # noqa: E402
from monitor.live.events import Point, SessionInfo  # noqa: E402
from results import write_results  # noqa: E402


def session(sid: str) -> SessionInfo:
    return SessionInfo(session_id=sid, started_at=time.time(), model_id="bench@1", model_version="1", device="cpu",
                       labels=("neutral", "happy", "sad", "angry"), source="bench", patient_id="P-BENCH",
                       settings={})


def point(i: int, wall: float | None = None) -> Point:
    return Point(index=i, t_start=i * 2.0, t_end=i * 2.0 + 1.5, valence=0.1, arousal=-0.2, confidence=0.8,
                 probabilities={"neutral": 0.7, "happy": 0.1, "sad": 0.1, "angry": 0.1}, latency_ms=12.5,
                 wall_time=time.time() if wall is None else wall)


def sink_rate(target: str | Path, data_dir: Path, n: int) -> dict[str, Any]:
    with Store.open(target, data_dir=data_dir) as store:
        sink = StoreSink(store, patient_id="P-BENCH", max_queue=n + 10)
        sink.start(session(f"sink-{n}-{time.time_ns()}"), heatmap=None)
        points = [point(i) for i in range(n)]
        t0 = time.perf_counter()
        for p in points:
            sink.point(p)
        sink.close()
        seconds = time.perf_counter() - t0
        assert sink.dropped == 0 and sink.write_errors == 0
    return {"points": n, "seconds": round(seconds, 3), "points_per_s": round(n / seconds, 1)}


def per_commit_rate(target: str | Path, data_dir: Path, n: int) -> dict[str, Any]:
    with Store.open(target, data_dir=data_dir) as store:
        sid = f"single-{time.time_ns()}"
        store.begin_session(session(sid))
        t0 = time.perf_counter()
        for i in range(n):
            store.write_batch(sid, [point(i)])
        seconds = time.perf_counter() - t0
    return {"points": n, "seconds": round(seconds, 3), "points_per_s": round(n / seconds, 1),
            "ms_per_commit": round(1000 * seconds / n, 2)}


def writer(target: str, data_dir: str, jsonl: str, pace: float) -> None:
    """The killed process: emit points at ``pace`` per second, logging each before the sink gets it."""
    store_target: str | Path = target if "://" in target else Path(target)
    store = Store.open(store_target, data_dir=data_dir)
    sink = StoreSink(store, patient_id="P-KILL")
    sink.start(session(f"kill-{os.getpid()}"), heatmap=None)
    with open(jsonl, "a", buffering=1) as log:
        i = 0
        while True:
            p = point(i)
            log.write(json.dumps({"index": i, "wall_time": p.wall_time}) + "\n")
            sink.point(p)
            i += 1
            time.sleep(1.0 / pace)


def kill_trial(target: str | Path, data_dir: Path, pace: float, rng: random.Random) -> dict[str, Any]:
    jsonl = Path(tempfile.mkstemp(suffix=".jsonl", dir=data_dir)[1])
    proc = subprocess.Popen([sys.executable, __file__, "--writer", str(target), str(data_dir), str(jsonl),
                             str(pace)], cwd=REPO)
    try:
        time.sleep(3.0 + rng.uniform(0.0, 3.0))  # past start-up, at a random moment between commits
        assert proc.poll() is None, "the writer exited early"
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    emitted = {}
    for line in jsonl.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        emitted[record["index"]] = record["wall_time"]
    with Store.open(target, data_dir=data_dir) as store:
        [row] = [s for s in store.sessions("P-KILL") if s.session_id == f"kill-{proc.pid}"]
        stored = {r["index"] for r in store.point_records(row.session_id)}
        recovered = row.end_state == "recovered"
    lost = sorted(set(emitted) - stored)
    return {"emitted": len(emitted), "stored": len(stored), "lost": len(lost),
            "seconds_lost": round(max((killed_at - emitted[i] for i in lost), default=0.0), 3),
            "stored_not_emitted": len(stored - set(emitted)), "recovered_on_open": recovered}


def bench_backend(name: str, target: str | Path, data_dir: Path, args: argparse.Namespace,
                  rng: random.Random) -> dict[str, Any]:
    print(f"{name}: sink ...", flush=True)
    out: dict[str, Any] = {"sink": sink_rate(target, data_dir, args.points)}
    print(f"  {out['sink']}\n{name}: one point per commit ...", flush=True)
    out["per_commit"] = per_commit_rate(target, data_dir, args.single)
    print(f"  {out['per_commit']}\n{name}: SIGKILL trials ...", flush=True)
    out["kills"] = [kill_trial(target, data_dir, args.pace, rng) for _ in range(args.trials)]
    out["max_seconds_lost"] = max(k["seconds_lost"] for k in out["kills"])
    print(f"  {out['kills']}", flush=True)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgresql", metavar="URL", help="a database to write into (default: a throwaway local server)")
    p.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    p.add_argument("--points", type=int, default=20000, help="points pushed through the sink (default: 20000)")
    p.add_argument("--single", type=int, default=1000, help="points written one per commit (default: 1000)")
    p.add_argument("--pace", type=float, default=2.0, help="points per second the killed writer emits (default: 2)")
    p.add_argument("--trials", type=int, default=5, help="SIGKILL trials per backend (default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "store.json")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "benchmarks" / "store.md")
    args = p.parse_args()
    rng = random.Random(args.seed)
    command = "python benchmarks/bench_store.py" + "".join(
        f" {shlex.quote(a) if not a.startswith('postgres') else 'URL'}" for a in sys.argv[1:])
    report: dict[str, Any] = {
        "command": command,
        "machine": {"platform": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version, "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"points": args.points, "single": args.single, "pace": args.pace, "trials": args.trials},
        "backends": {},
    }
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        os.chmod(data_dir, 0o700)
        try:
            for backend in args.backends:
                if backend == "sqlite":
                    target: str | Path = data_dir / "bench.sqlite"
                    report["backends"]["sqlite"] = bench_backend("sqlite", target, data_dir, args, rng)
                    continue
                if args.postgresql:
                    url = args.postgresql
                    report["postgresql_server"] = "given with --postgresql"
                else:
                    from tests.postgres import PostgresServer

                    server = PostgresServer().start()
                    url = server.new_database()
                    report["postgresql_server"] = "a local server started for the run by tests/postgres.py, fsync on"
                with Store.open(url, data_dir=data_dir) as store:
                    report["postgresql_version"] = store.conn.execute("SHOW server_version").fetchone()[0]
                report["backends"]["postgresql"] = bench_backend("postgresql", url, data_dir, args, rng)
        finally:
            if server is not None:
                server.destroy()
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown(report)
    write_results(report, args.out, args.table, table)
    print(table)
    return 0


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Store benchmark",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, SQLite {m['sqlite']}"
        + (f", PostgreSQL {report['postgresql_version']} ({report['postgresql_server']})"
           if "postgresql_version" in report else "")
        + f"; load average {m['load_average_start'][0]} at the start, {m['load_average_end'][0]} at the end "
          "(a shared machine). Both backends commit durably: SQLite WAL with synchronous=FULL, PostgreSQL "
          "synchronous_commit=on with fsync on.",
        "",
        "| backend | sink (batched as live): points/s | one point per commit: points/s (ms/commit) "
        "| SIGKILL trials | points lost per trial | seconds of points lost, max |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in report["backends"].items():
        lost = ", ".join(str(k["lost"]) for k in b["kills"])
        lines.append(f"| {name} | {b['sink']['points_per_s']:.0f} ({b['sink']['points']} points) "
                     f"| {b['per_commit']['points_per_s']:.0f} ({b['per_commit']['ms_per_commit']} ms) "
                     f"| {len(b['kills'])} | {lost} | {b['max_seconds_lost']} |")
    s = report["settings"]
    lines += [
        "",
        f"Sink: {s['points']} points handed to `StoreSink.point()` at once, the writer thread committing what is "
        "queued (up to 1000 per transaction), timed until `close()` returned. One point per commit: "
        f"{s['single']} calls of `Store.write_batch(session, [point])`, what a session at speaking pace does. "
        f"SIGKILL: a process emits {s['pace']:g} points/s through `StoreSink`, logging each to a JSONL file first; "
        "it is killed 3-6 s in; \"seconds lost\" is the age at the kill of the oldest emitted point missing from "
        "the store (0: none missing). Every killed session was closed as `recovered` when the store was opened "
        "again: " + ", ".join(f"{n} {all(k['recovered_on_open'] for k in b['kills'])}"
                               for n, b in report["backends"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
