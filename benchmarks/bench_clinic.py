"""Concurrent real-time room sessions one clinic server holds, with and without cross-session batching.

An in-process ``ClinicServer`` (127.0.0.1, SQLite store in a temporary
folder) is built exactly as ``mood-monitor serve`` builds it
(``build_parser`` -> ``load_clinic_model`` -> ``RoomSessionFactory``), with the
shipped default model. N rooms connect at once, each a real ``RoomStreamer``
over a websocket replaying a different RAVDESS actor's session (6 clips with
0.5 s pauses, ~20-25 s) at real-time pace. For each batching configuration
N grows (2, 4, 8, 12 by default) until the configuration no longer keeps up.

Per run it records, from the server side: latency from segment end to point
(each session summary's p50/p95, and the pooled p95 over every point), audio
the server received against each file's duration, failed segments, the
server's backlog (pushed audio and segments waiting, sampled every 0.25 s),
how long each session ran on after its audio ended, the process's CPU time
per second of audio and its utilisation of the machine's cores, and the mean
backbone batch size. The clients run in the same process, so their (small)
CPU cost is included.

A run "keeps real time" when all audio arrived, no segment failed, every
session ended within 2 s of its audio and the pooled p95 latency is under 2 s.

    python benchmarks/bench_clinic.py            # 3 configurations x N = 2, 4, 8, 12 (~5-6 min on 2 cores)
    python benchmarks/bench_clinic.py --quick    # N = 2, 4 only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import soundfile as sf
from results import write_results

if TYPE_CHECKING:
    from monitor.audio.frames import AudioFrame
    from monitor.serve.clinic import ClinicServer

REPO = Path(__file__).resolve().parents[1]
DATA_DEFAULT = Path(os.environ.get("MOOD_MONITOR_DATA", REPO.parent / "shared" / "data"))
SAMPLE_RATE = 16000
TOKEN = "bench-clinic-token"
#: name -> (--max-batch, --max-wait-ms); max batch 1 is no cross-session batching
CONFIGS: dict[str, tuple[int, float]] = {"unbatched": (1, 0.0), "batch16": (16, 0.0), "batch16-wait20": (16, 20.0)}
TAIL_LIMIT_S = 2.0
P95_LIMIT_MS = 2000.0


def actor_session(data_root: Path, actor: int, clips: int, gap_s: float, path: Path) -> float:
    """``clips`` clips of one actor (varied emotions) with pauses, written to ``path``; returns its duration."""
    from monitor.audio.io import read_audio

    folder = data_root / "ravdess" / f"Actor_{actor:02d}"
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise SystemExit(f"no RAVDESS clips under {folder}; pass --data-root or set MOOD_MONITOR_DATA")
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    chosen = [files[(i * 5 + actor) % len(files)] for i in range(clips)]
    parts: list[np.ndarray] = []
    for i, clip in enumerate(chosen):
        parts.append(np.asarray(read_audio(clip), dtype=np.float32))
        if i < len(chosen) - 1:
            parts.append(gap)
    audio = np.concatenate(parts)
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def timed_source(path: Path) -> Any:
    """A real-time ``FileSource`` that notes when its replay started and ended (the room's audio end)."""
    from monitor.audio.sources import FileSource

    class TimedFileSource(FileSource):
        replay_started: float | None = None
        replay_ended: float | None = None

        def frames(self) -> Iterator[AudioFrame]:
            self.replay_started = time.monotonic()
            yield from super().frames()
            self.replay_ended = time.monotonic()

    return TimedFileSource(path, realtime=True)


@dataclass
class Backlog:
    """The server's queues, sampled while the rooms stream: the most pushed chunks and segments waiting."""

    frame_chunks_max: int = 0
    segments_max: int = 0
    samples: int = 0


def sample_backlog(server: ClinicServer, stop: threading.Event, backlog: Backlog) -> None:
    while not stop.wait(0.25):
        for room in list(server.sessions.values()):
            if room.pipeline is None:
                continue
            status = room.pipeline.status()
            backlog.frame_chunks_max = max(backlog.frame_chunks_max, status.frame_queue)
            backlog.segments_max = max(backlog.segments_max, status.segment_queue)
        backlog.samples += 1


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_rooms(args: argparse.Namespace, max_batch: int, max_wait_ms: float, wavs: list[tuple[Path, float]],
              workdir: Path) -> dict[str, Any]:
    """One server, ``len(wavs)`` rooms streaming at once; what the server did."""
    from monitor.history.store import Store
    from monitor.room_client import RoomStats, RoomStreamer, stream_source
    from monitor.serve.clinic import ClinicConfig, ClinicServer
    from monitor.serve.config import ServerConfig
    from monitor.serve_command import RoomSessionFactory, build_parser, load_clinic_model

    n = len(wavs)
    db = workdir / f"clinic_b{max_batch}_w{max_wait_ms:g}_n{n}.sqlite"
    serve_args = build_parser().parse_args(["--port", "0", "--db", str(db), "--max-batch", str(max_batch),
                                            "--max-wait-ms", str(max_wait_ms)]
                                           + (["--model", args.model] if args.model else []))
    shared = load_clinic_model(serve_args)
    store = Store.open(str(db))
    server = ClinicServer(RoomSessionFactory(shared, store, serve_args), ServerConfig(port=0, token=TOKEN),
                          ClinicConfig(), store=store)
    service = shared.service
    batch_sizes: list[int] = getattr(service, "batch_sizes", [])
    # warm the backbone (lazy set-up, first-call allocations) outside the measurement
    rng = np.random.default_rng(0)
    for _ in range(2):
        service.features([rng.normal(0, 0.05, SAMPLE_RATE * 2).astype(np.float32)])
    batch_sizes.clear()
    server.start()
    assert server.url is not None
    url = server.url.replace("http", "ws", 1)
    sources = [timed_source(path) for path, _ in wavs]
    returned: list[float] = [0.0] * n

    async def one(i: int) -> RoomStats:
        streamer = RoomStreamer(url, TOKEN, f"P{i + 1:02d}", room=f"room-{i + 1}")
        stats = await stream_source(streamer, sources[i])
        returned[i] = time.monotonic()
        return stats

    async def all_rooms() -> list[RoomStats]:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    backlog, stop_sampling = Backlog(), threading.Event()
    sampler = threading.Thread(target=sample_backlog, args=(server, stop_sampling, backlog), daemon=True)
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before, wall_before = time.process_time(), time.monotonic()
    sampler.start()
    try:
        results = asyncio.run(all_rooms())
    finally:
        stop_sampling.set()
        sampler.join()
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        load_after = os.getloadavg()
        server_stats = dict(server.stats)
        server.stop()
        shared.close()
        store.close()

    audio_total = sum(d for _, d in wavs)
    sessions: list[dict[str, Any]] = []
    pooled: list[float] = []
    for i, (stats, (path, duration)) in enumerate(zip(results, wavs, strict=True)):
        summary = stats.summary or {}
        latencies = [float(p["latency_ms"]) for p in stats.point_bodies if "latency_ms" in p]
        pooled.extend(latencies)
        src = sources[i]
        tail = returned[i] - src.replay_ended if src.replay_ended is not None else None
        replay = (src.replay_ended - src.replay_started
                  if src.replay_ended is not None and src.replay_started is not None else None)
        server_audio = float(summary.get("audio_seconds", 0.0))
        sessions.append({
            "file": path.name, "duration_s": round(duration, 3),
            "server_audio_s": round(server_audio, 3), "acked_audio_s": round(stats.received_seconds, 3),
            "dropped_audio_s": round(max(0.0, duration - server_audio), 3),
            "dropped_frames": summary.get("dropped_frames"), "failed_segments": summary.get("failed_segments"),
            "segments": summary.get("segments"), "points": summary.get("points"),
            "points_received": stats.points,
            "latency_p50_ms": summary.get("latency_p50_ms"), "latency_p95_ms": summary.get("latency_p95_ms"),
            "session_wall_s": summary.get("wall_seconds"), "replay_s": None if replay is None else round(replay, 3),
            "ended_after_audio_s": None if tail is None else round(tail, 3),
            "points_not_stored": summary.get("points_not_stored"),
            "error": stats.error, "reconnects": stats.reconnects,
        })
    p50s = [float(s["latency_p50_ms"]) for s in sessions if s["latency_p50_ms"] is not None]
    p95s = [float(s["latency_p95_ms"]) for s in sessions if s["latency_p95_ms"] is not None]
    tails = [float(s["ended_after_audio_s"]) for s in sessions if s["ended_after_audio_s"] is not None]
    dropped = sum(float(s["dropped_audio_s"]) for s in sessions)
    failed = sum(int(s["failed_segments"] or 0) for s in sessions)
    pooled_p95 = percentile(pooled, 95)
    kept = (len(tails) == n and dropped < 0.05 and failed == 0 and all(s["error"] is None for s in sessions)
            and max(tails) <= TAIL_LIMIT_S and pooled_p95 is not None and pooled_p95 <= P95_LIMIT_MS)
    cores = os.cpu_count() or 1
    return {
        "rooms": n, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "audio_s_total": round(audio_total, 3), "wall_s": round(wall, 3),
        "points": len(pooled), "segments": sum(int(s["segments"] or 0) for s in sessions),
        "latency_p50_ms_mean_of_sessions": None if not p50s else round(float(np.mean(p50s)), 1),
        "latency_p50_ms_pooled": None if not pooled else round(float(np.median(pooled)), 1),
        "latency_p95_ms_max_of_sessions": None if not p95s else round(max(p95s), 1),
        "latency_p95_ms_pooled": None if pooled_p95 is None else round(pooled_p95, 1),
        "latency_max_ms": None if not pooled else round(max(pooled), 1),
        "dropped_audio_s": round(dropped, 3), "failed_segments": failed,
        "ended_after_audio_s_max": None if not tails else round(max(tails), 3),
        "session_wall_over_audio_max": round(max(float(s["session_wall_s"] or 0) / float(s["duration_s"])
                                                 for s in sessions), 3),
        "backlog": {"pushed_chunks_max": backlog.frame_chunks_max, "segments_max": backlog.segments_max,
                    "samples": backlog.samples},
        "cpu_s": round(cpu, 3), "cpu_s_per_audio_s": round(cpu / audio_total, 4),
        "cpu_utilisation": round(cpu / wall / cores, 3),
        "max_rss_mb": round(usage_after.ru_maxrss / 1024, 1),
        "voluntary_ctx_switches": usage_after.ru_nvcsw - usage_before.ru_nvcsw,
        "backbone_passes": len(batch_sizes),
        "mean_batch_size": None if not batch_sizes else round(float(np.mean(batch_sizes)), 2),
        "max_batch_size_seen": max(batch_sizes) if batch_sizes else None,
        "server_stats": server_stats,
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
        "kept_real_time": bool(kept),
        "sessions": sessions,
    }


def markdown(report: dict[str, Any]) -> str:
    rows = ["| batching (max batch, wait) | rooms | latency p50 (mean of sessions) | p95 (worst session) "
            "| p95 pooled | max | dropped audio | failed segments | ended after audio (worst) "
            "| peak backlog: chunks / segments "
            "| CPU s per audio s | CPU utilisation | mean batch | keeps real time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0f} ms"

    for r in report["runs"]:
        tail = r["ended_after_audio_s_max"]
        rows.append(
            f"| {r['config']} ({r['max_batch']}, {r['max_wait_ms']:g} ms) | {r['rooms']} "
            f"| {ms(r['latency_p50_ms_mean_of_sessions'])} "
            f"| {ms(r['latency_p95_ms_max_of_sessions'])} | {ms(r['latency_p95_ms_pooled'])} "
            f"| {ms(r['latency_max_ms'])} | {r['dropped_audio_s']:.2f} s | {r['failed_segments']} "
            f"| {'n/a' if tail is None else f'{tail:.2f} s'} "
            f"| {r['backlog']['pushed_chunks_max']} / {r['backlog']['segments_max']} "
            f"| {r['cpu_s_per_audio_s']:.3f} | {100 * r['cpu_utilisation']:.0f} % "
            f"| {r['mean_batch_size'] if r['mean_batch_size'] is not None else 'n/a'} "
            f"| {'yes' if r['kept_real_time'] else 'no'} |")
    m = report["machine"]
    lines = ["# Clinic server benchmark: concurrent real-time rooms\n",
             f"Command: `{report['command']}`\n",
             f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
             f"torch {m['torch']}, CUDA: {m['cuda']}. Model: {report['model']}. Load average (1/5/15 min) before "
             f"{report['load_avg_before']}, after {report['load_avg_after']} (the machine was shared).\n",
             f"Each room replays its own RAVDESS actor's session ({report['session']['clips']} clips, "
             f"{report['session']['gap_s']} s pauses, {report['session']['seconds_min']:.1f}-"
             f"{report['session']['seconds_max']:.1f} s) in real time through a `RoomStreamer` over a websocket "
             "to one in-process `ClinicServer`. Latency: segment end to point, server side. \"Ended after "
             "audio\": how long after the room's last audio the session's end reached the room. CPU: the whole "
             "process (server and rooms) per second of audio streamed; utilisation of all CPUs. "
             f"Keeps real time: no audio dropped, no failed segment, every session ended within {TAIL_LIMIT_S:g} s "
             f"of its audio, pooled p95 under {P95_LIMIT_MS:g} ms.\n",
             "\n".join(rows) + "\n"]
    if report.get("findings"):
        lines.append("\n".join(f"- {f}" for f in report["findings"]) + "\n")
    return "\n".join(lines)


def findings(runs: list[dict[str, Any]]) -> list[str]:
    """At most five statements, each computed from this run's numbers only."""
    if not runs:
        return []
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_config.setdefault(r["config"], []).append(r)
    held = []
    for config, rs in by_config.items():
        kept = [r["rooms"] for r in rs if r["kept_real_time"]]
        failed = [r["rooms"] for r in rs if not r["kept_real_time"]]
        text = f"{config} {max(kept) if kept else 'none'}"
        held.append(text + (f" (not {min(failed)})" if failed else " (all tried)"))
    out = ["Most rooms kept in real time: " + ", ".join(held) + "."]
    common = [n for n in sorted({r["rooms"] for r in runs})
              if all(any(r["rooms"] == n and r["kept_real_time"] for r in rs) for rs in by_config.values())]
    if common:
        n = common[-1]
        at_n = [r for r in runs if r["rooms"] == n]
        out.append(f"At {n} rooms (kept by every configuration): pooled p95 latency "
                   + ", ".join(f"{r['config']} {r['latency_p95_ms_pooled']:.0f} ms" for r in at_n)
                   + "; mean backbone batch " + ", ".join(f"{r['config']} {r['mean_batch_size']}" for r in at_n)
                   + "; CPU s per audio s " + ", ".join(f"{r['config']} {r['cpu_s_per_audio_s']:.3f}" for r in at_n)
                   + ".")
    out.append(f"Over all {len(runs)} runs: {sum(r['dropped_audio_s'] for r in runs):.2f} s of audio dropped, "
               f"{sum(r['failed_segments'] for r in runs)} failed segments; the most CPU used was "
               f"{100 * max(r['cpu_utilisation'] for r in runs):.0f} % of the machine's CPUs.")
    first_fail = next((r for r in runs if not r["kept_real_time"]), None)
    if first_fail is not None:
        out.append(f"Where {first_fail['config']} stopped keeping real time ({first_fail['rooms']} rooms) the 1-min "
                   f"load average went {first_fail['load_avg_before'][0]} -> {first_fail['load_avg_after'][0]} "
                   "on this shared machine: verdicts near the limit depend on what else runs.")
    rs = runs if len(by_config) == 1 else by_config.get("unbatched", runs)
    low, high = min(rs, key=lambda r: r["rooms"]), max(rs, key=lambda r: r["rooms"])
    if high["rooms"] > low["rooms"]:
        out.append(f"All rooms start together with clips of similar length, so segments reach the one shared-model "
                   f"thread in bursts: {high['config']} pooled p95 grows {low['latency_p95_ms_pooled']:.0f} ms "
                   f"({low['rooms']} rooms) -> {high['latency_p95_ms_pooled']:.0f} ms ({high['rooms']}) while CPU "
                   f"use stays at {100 * high['cpu_utilisation']:.0f} %, consistent with segments waiting for "
                   "one forward pass at a time.")
    return out[:5]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DATA_DEFAULT,
                   help="folder holding ravdess/ (default: $MOOD_MONITOR_DATA, else ../shared/data)")
    p.add_argument("--rooms", default="2,4,8,12",
                   help="comma list of concurrent room counts, tried in order per configuration until one "
                        "does not keep real time (default: 2,4,8,12)")
    p.add_argument("--quick", action="store_true", help="rooms 2,4 only")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma list of batching configurations: unbatched (--max-batch 1), batch16 (--max-batch 16 "
                        "--max-wait-ms 0), batch16-wait20 (--max-batch 16 --max-wait-ms 20) (default: all three)")
    p.add_argument("--model", default=None, help="bundle to serve (default: the shipped default, as `serve` does)")
    p.add_argument("--clips", type=int, default=6, help="RAVDESS clips per room's session (default: 6)")
    p.add_argument("--gap", type=float, default=0.5, help="pause between clips, seconds (default: 0.5)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads, set once (default: 2)")
    p.add_argument("--keep-going", action="store_true",
                   help="try every room count even after a configuration stopped keeping real time")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "clinic.json", help="JSON report")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "benchmarks" / "clinic.md", help="markdown table")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from monitor.model.bundle import load_bundle

    room_counts = [2, 4] if args.quick else [int(x) for x in args.rooms.split(",")]
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    bundle = load_bundle(args.model)
    model_name = f"{args.model or 'shipped default'} ({bundle.backbone.get('kind')}, {bundle.model_id})"
    workdir = Path(tempfile.mkdtemp(prefix="bench_clinic_"))
    load_before = os.getloadavg()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    try:
        wavs = []
        for i in range(max(room_counts)):
            path = workdir / f"actor{i + 1:02d}.wav"
            wavs.append((path, actor_session(args.data_root, i % 24 + 1, args.clips, args.gap, path)))
        for config in configs:
            max_batch, max_wait_ms = CONFIGS[config]
            for n in room_counts:
                print(f"== {config}: {n} rooms", flush=True)
                result = {"config": config, **run_rooms(args, max_batch, max_wait_ms, wavs[:n], workdir)}
                runs.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "sessions"}, indent=1), flush=True)
                if not result["kept_real_time"] and not args.keep_going:
                    break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    durations = [d for _, d in wavs]
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/bench_clinic.py" + ("" if not given else " " + shlex.join(given))
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "model": model_name,
        "session": {"clips": args.clips, "gap_s": args.gap, "seconds_min": min(durations),
                    "seconds_max": max(durations)},
        "criteria": {"ended_after_audio_s_max": TAIL_LIMIT_S, "latency_p95_ms_pooled_max": P95_LIMIT_MS},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "total_wall_s": round(time.monotonic() - started, 1),
        "command": command,
        "runs": runs,
    }
    report["findings"] = findings(runs)
    table = markdown(report)
    write_results(report, args.out, args.table, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
