"""Ray for the model pool and for batch work, against the same work in one process.

With the shipped default model (Whisper base encoder), on this machine's CPUs:

a. sessions: N real-time sessions (each its own ``MonitorPipeline``, replaying
   RAVDESS clips at the pace of speech) share one feature service: the
   in-process ``BatchingFeatureService``, then a Ray Serve pool of 1 and of 2
   CPU replicas (the machine's cores split between them). Latency from a
   segment's end to its point (p50/p95 over every session's points), audio
   dropped, segments failed, and how far the replay fell behind real time
   (a file source waits instead of dropping; a microphone would have dropped
   that much).
b. the Ray hop: one segment at a time, the pool's ``features([wave])`` against
   the in-process backbone on the same segment, alternating; the difference
   is what the trip through Ray Serve costs per segment.
c. ``@serve.batch``: single-segment requests from many threads at once, with
   ``max_batch_size`` 1 and 8: segments per second.
d. batch: files per second for a folder of corpus clips, ``MoodModel`` in one
   process against Ray Data with 2 workers (``mood-monitor analyze --ray``'s
   path), each including its model start-up.

Writes JSON and a markdown table. Compare ratios within one run, not absolute
times across machines.

    python benchmarks/bench_ray.py            # everything, ~6 min on 2 cores
    python benchmarks/bench_ray.py --quick    # fewer sessions, clips and files, ~3 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from bench_pipeline import Collector  # the point sink the pipeline benchmark keeps
from results import write_results

REPO = Path(__file__).resolve().parents[1]
MODEL = "whisper"


def session_clips(data_root: Path, n: int, offset: int = 0) -> list[Path]:
    """One clip per actor, cycling emotions, so every session has varied voices and moods."""
    clips = []
    for i in range(offset, offset + n):
        files = sorted((data_root / "ravdess" / f"Actor_{i % 24 + 1:02d}").glob("*.wav"))
        if not files:
            raise SystemExit(f"no RAVDESS clips under {data_root / 'ravdess'}; pass --data-root")
        clips.append(files[(i * 7) % len(files)])
    return clips


def write_session(clips: list[Path], gap_s: float, path: Path) -> float:
    from monitor.audio.io import read_audio

    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    audio = np.concatenate([x for c in clips for x in (read_audio(c), gap)])
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    return len(audio) / 16000


def sessions(model, projector, service, wavs: list[Path]) -> dict:
    """Every wav as its own real-time session, all at once, sharing ``service``."""
    from monitor.audio.sources import FileSource
    from monitor.live.heatmap import HeatmapConfig
    from monitor.live.pipeline import MonitorConfig, MonitorPipeline
    from monitor.live.shared_model import PooledModel

    sinks = [Collector() for _ in wavs]
    pipelines = [MonitorPipeline(FileSource(w, realtime=True), PooledModel(model, service), projector, sinks=[s],
                                 config=MonitorConfig(heatmap=HeatmapConfig(smoothing_sigma=0)))
                 for w, s in zip(wavs, sinks, strict=True)]
    with ThreadPoolExecutor(len(pipelines)) as pool:
        summaries = list(pool.map(lambda p: p.run(), pipelines))
    lat = np.asarray([p.latency_ms for s in sinks for p in s.points])
    return {
        "sessions": len(wavs),
        "segments": sum(s.segments for s in summaries),
        "points": sum(s.points for s in summaries),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_max": float(lat.max()),
        "dropped_frames": sum(s.dropped_frames for s in summaries),
        "failed_segments": sum(s.failed_segments for s in summaries),
        "behind_real_time_s_max": max(s.wall_seconds - s.audio_seconds for s in summaries),
    }


def ray_hop(model, service, waves: list[np.ndarray], repeats: int, pause_s: float = 0.3) -> dict:
    """Per segment, alternating: the bare in-process backbone, then the same segment through the pool.

    Each call starts after a pause: the other process's OpenMP threads spin for a while after their last
    work, and on a small machine they would slow the call being timed."""
    here, there = [], []
    for _ in range(repeats):
        for w in waves:
            time.sleep(pause_s)
            t = time.perf_counter()
            model.backbone_features([w])
            here.append(time.perf_counter() - t)
            time.sleep(pause_s)
            t = time.perf_counter()
            service.features([w])
            there.append(time.perf_counter() - t)
    diffs = [b - a for a, b in zip(here, there, strict=True)]
    return {"segments": len(here), "in_process_ms_p50": 1000 * statistics.median(here),
            "ray_ms_p50": 1000 * statistics.median(there), "hop_ms_p50": 1000 * statistics.median(diffs),
            "ray_over_in_process": statistics.median(there) / statistics.median(here)}


def throughput(service, waves: list[np.ndarray], senders: int, seconds: float) -> dict:
    """``senders`` threads each send one segment at a time for ``seconds``: segments per second."""
    done = [0] * senders
    stop = time.monotonic() + seconds

    def send(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            service.features([waves[i % len(waves)]])
            done[k] += 1
            i += senders

    t, cpu = time.monotonic(), time.process_time()
    threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall, cpu = time.monotonic() - t, time.process_time() - cpu
    # this process only sends and receives: its CPU time is what the session side spends per segment on Ray
    return {"senders": senders, "segments": sum(done), "seconds": wall, "segments_per_s": sum(done) / wall,
            "caller_cpu_ms_per_segment": 1000 * cpu / max(1, sum(done))}


def segments_of(wav: Path) -> list[np.ndarray]:
    from monitor.audio.io import read_audio
    from monitor.audio.segmenter import segment_signal

    return [s.audio for s in segment_signal(read_audio(wav))]


def batch_files(files: list[str], ray_workers: int) -> dict:
    """Files per second, model start-up included: one process, then Ray Data with ``ray_workers`` workers."""
    from monitor import MoodModel

    out = {"files": len(files)}
    t = time.monotonic()
    local = MoodModel.from_pretrained(MODEL, device="cpu", progress=False)
    loaded = time.monotonic() - t
    table_here = local.process_files(files, errors="report")
    out["single_process"] = {"seconds": time.monotonic() - t, "model_load_s": loaded,
                             "files_per_s": len(files) / (time.monotonic() - t)}
    local.ray, local.num_workers = "local", ray_workers
    t = time.monotonic()
    table_there = local.process_files(files, errors="report")
    out["ray_data"] = {"workers": ray_workers, "seconds": time.monotonic() - t,
                       "files_per_s": len(files) / (time.monotonic() - t)}
    out["same_table"] = bool(np.allclose(table_here[["valence", "arousal"]].to_numpy(),
                                         table_there[["valence", "arousal"]].to_numpy(), atol=1e-4, equal_nan=True)
                             and table_here.index.equals(table_there.index))
    out["ray_over_single"] = out["ray_data"]["files_per_s"] / out["single_process"]["files_per_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding ravdess/")
    p.add_argument("--sessions", type=int, default=4, help="concurrent real-time sessions in (a) (default: 4)")
    p.add_argument("--clips", type=int, default=8, help="RAVDESS clips per session, 1 s apart (default: 8)")
    p.add_argument("--hop-repeats", type=int, default=2, help="passes over one session's segments in (b)")
    p.add_argument("--senders", type=int, default=8, help="threads sending single segments in (c) (default: 8)")
    p.add_argument("--load-seconds", type=float, default=20.0, help="length of each load in (c) (default: 20)")
    p.add_argument("--files", type=int, default=96, help="corpus clips in the batch of (d) (default: 96)")
    p.add_argument("--quick", action="store_true",
                   help="2 sessions of 4 clips, 8 s loads, 24 files: the same figures, less steady")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "ray.json")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "benchmarks" / "ray.md")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.clips, args.load_seconds, args.files, args.hop_repeats = 2, 4, 8.0, 24, 1

    import ray

    from monitor.live.projection import Projector
    from monitor.live.ray_pool import RayFeatureService, RayPoolConfig
    from monitor.live.shared_model import BatchingConfig, BatchingFeatureService
    from monitor.model.bundle import load_model

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    wavs = [tmp / f"session{i}.wav" for i in range(args.sessions)]
    session_seconds = [write_session(session_clips(args.data_root, args.clips, offset=3 * i), 1.0, w)
                       for i, w in enumerate(wavs)]
    bundle, model = load_model(MODEL, device="cpu")
    projector = Projector(bundle.reducer, bundle.labels)
    waves = segments_of(wavs[0])
    report: dict = {"model": bundle.model_id, "cores": cores, "torch_threads": torch.get_num_threads(),
                    "load_average_1min_before": os.getloadavg()[0]}

    def log(name: str, value: dict) -> None:
        value["load_average_1min_after"] = os.getloadavg()[0]  # other work on a shared machine shows here
        report[name] = value
        print(name, json.dumps(value, indent=1), flush=True)

    # (a) in process
    service = BatchingFeatureService(model, BatchingConfig(max_batch=8)).start()
    sessions(model, projector, service, wavs[:1])  # warm-up of the lazy parts
    log("sessions_in_process", sessions(model, projector, service, wavs))
    service.close()

    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        one = RayFeatureService(MODEL, RayPoolConfig(replicas=1, num_cpus=cores, max_batch=8))
        log("ray_hop", ray_hop(model, one, waves, args.hop_repeats))
        log("serve_batch_8", throughput(one, waves, args.senders, args.load_seconds))
        log("sessions_ray_1_replica", sessions(model, projector, one, wavs))
        one.close()
        unbatched = RayFeatureService(MODEL, RayPoolConfig(replicas=1, num_cpus=cores, max_batch=1))
        log("serve_batch_1", throughput(unbatched, waves, args.senders, args.load_seconds))
        unbatched.close()
        two = RayFeatureService(MODEL, RayPoolConfig(replicas=2, num_cpus=cores / 2, max_batch=8))
        log("sessions_ray_2_replicas", sessions(model, projector, two, wavs))
        two.close()

        # (d) batch work, once the pool has given its CPUs back
        files = [str(f) for f in session_clips(args.data_root, args.files, offset=100)]
        log("batch", batch_files(files, ray_workers=2))
    finally:
        ray.shutdown()

    report["serve_batch_gain"] = report["serve_batch_8"]["segments_per_s"] / report["serve_batch_1"]["segments_per_s"]
    report["setup"] = {"sessions": args.sessions, "clips_per_session": args.clips,
                       "session_seconds": session_seconds[0], "senders": args.senders,
                       "load_seconds": args.load_seconds, "files": args.files,
                       "platform": platform.platform(), "torch": torch.__version__, "ray": ray.__version__}
    report["command"] = "python benchmarks/bench_ray.py " + " ".join(argv if argv is not None else [])
    table = markdown(report)
    write_results(report, args.out, args.table, table)
    print(table)
    return 0


def markdown(r: dict) -> str:
    s = r["setup"]
    rows = ["| service | p50 latency | p95 latency | p95 / in-process p95 | dropped frames | failed segments "
            "| behind real time at the end |", "|---|---|---|---|---|---|---|"]
    base = r["sessions_in_process"]["latency_ms_p95"]
    for key, name in (("sessions_in_process", "in process (`BatchingFeatureService`)"),
                      ("sessions_ray_1_replica", f"Ray Serve, 1 replica × {r['cores']} CPUs"),
                      ("sessions_ray_2_replicas", f"Ray Serve, 2 replicas × {r['cores'] / 2:g} CPU")):
        x = r[key]
        rows.append(f"| {name} | {x['latency_ms_p50']:.0f} ms | {x['latency_ms_p95']:.0f} ms | "
                    f"{x['latency_ms_p95'] / base:.2f} | {x['dropped_frames']} | {x['failed_segments']} of "
                    f"{x['segments']} | {x['behind_real_time_s_max']:.1f} s |")
    hop, b1, b8, batch = r["ray_hop"], r["serve_batch_1"], r["serve_batch_8"], r["batch"]
    return (
        "# Ray benchmark\n\n"
        f"Command: `{r['command'].strip()}`. Model `{r['model']}`, {r['cores']} cores, torch {s['torch']}, "
        f"Ray {s['ray']}, no GPU. Figures are measured in one run; compare the ratios. The machine is shared: "
        f"1-minute load average {r['load_average_1min_before']:.1f} at the start, "
        + ", ".join(f"{r[k]['load_average_1min_after']:.1f} after {k}" for k in (
            "sessions_in_process", "ray_hop", "serve_batch_8", "sessions_ray_1_replica", "serve_batch_1",
            "sessions_ray_2_replicas", "batch") if "load_average_1min_after" in r.get(k, {}))
        + ".\n\n"
        f"## a. {s['sessions']} concurrent real-time sessions ({s['session_seconds']:.0f} s of RAVDESS clips each)\n\n"
        "Latency: a segment's end to its point, over every session's points. A replayed file waits instead of "
        "dropping, so \"behind real time\" is the audio a microphone would have lost.\n\n"
        + "\n".join(rows) + "\n\n"
        "## b. The Ray hop, one segment at a time\n\n"
        "| in-process backbone p50 | through the Ray pool p50 | hop p50 (paired difference) | ratio |\n"
        "|---|---|---|---|\n"
        f"| {hop['in_process_ms_p50']:.0f} ms | {hop['ray_ms_p50']:.0f} ms | {hop['hop_ms_p50']:.1f} ms | "
        f"{hop['ray_over_in_process']:.2f} |\n\n"
        f"{hop['segments']} segments, 1 replica with the machine's {r['cores']} cores.\n\n"
        f"## c. `@serve.batch` under load ({s['senders']} threads sending single segments, {s['load_seconds']:g} s)\n\n"
        "| max_batch_size | segments/s |\n|---|---|\n"
        f"| 1 | {b1['segments_per_s']:.2f} |\n| 8 | {b8['segments_per_s']:.2f} |\n\n"
        f"Gain from batching: {r['serve_batch_gain']:.2f}×. CPU time the calling process spent per segment "
        f"(sending, receiving, routing): {b8['caller_cpu_ms_per_segment']:.1f} ms.\n\n"
        f"## d. Batch: {batch['files']} RAVDESS files, model start-up included\n\n"
        "| path | seconds | files/s |\n|---|---|---|\n"
        f"| one process (`MoodModel`) | {batch['single_process']['seconds']:.1f} | "
        f"{batch['single_process']['files_per_s']:.2f} |\n"
        f"| Ray Data, {batch['ray_data']['workers']} workers | {batch['ray_data']['seconds']:.1f} | "
        f"{batch['ray_data']['files_per_s']:.2f} |\n\n"
        f"Ray Data / one process: {batch['ray_over_single']:.2f}×; the same table: {batch['same_table']}.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
