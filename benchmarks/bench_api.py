"""The researcher's API against one CLI call per file, the live pipeline and the bare model.

For the shipped default model on the developer corpora (RAVDESS, EMOVO, JL-Corpus under ``--data-root``):

1. ``process_folder`` over each corpus with 1 and 2 worker processes: files
   and segments per second, wall time as a user sees it (2 workers: process
   start-up included);
2. the bare model on the same VAD segments, one ``embed_waveforms`` call per
   segment (what the live worker does for one speaker): the folder path's
   time per segment against it, measured right after the 1-worker run, and
   also interleaved chunk by chunk (``process_files`` on 24 files, then the
   bare forward of their segments) so a load change on a shared machine hits
   both; and single ``process_file`` calls against the bare forward of their
   segments (one call's fixed costs: reading, the VAD and speech gate, the
   table);
3. one CLI call per file (``mood-monitor --input F --fast --jsonl ...``, the
   only way before the API, and ``mood-monitor analyze F``) on a few RAVDESS
   files;
4. the live pipeline's cost per segment: RAVDESS clips replayed as one
   session with ``--fast`` through ``MonitorPipeline``;
5. ``process_signal`` on one 3 s array, in milliseconds (median of repeats).

Ratios are taken within one run: the machine may be shared, and the load
average is recorded at the start and the end.

    python benchmarks/bench_api.py                       # everything (~15 min on 2 busy cores)
    python benchmarks/bench_api.py --corpora ravdess --limit 120 --cli-files 3   # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import write_results

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("ravdess", "emovo", "jl-corpus")
TARGET_SPEEDUP, TARGET_OVERHEAD = 10.0, 1.3


def corpus_files(root: Path, limit: int | None) -> list[Path]:
    from monitor.api import find_audio

    files = find_audio(root)
    if limit and len(files) > limit:  # spread over the corpus (speakers, emotions), not its first folder
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def segments_of(files: list[Path], vad) -> list[np.ndarray]:
    from monitor.audio.io import read_audio
    from monitor.audio.segmenter import segment_signal

    return [s.audio for f in files for s in segment_signal(read_audio(f), vad)]


def bare_seconds(model, waves: list[np.ndarray]) -> float:
    """Total time of the model alone, one segment per call."""
    total = 0.0
    for wave in waves:
        t0 = time.perf_counter()
        model.embed_waveforms([wave])
        total += time.perf_counter() - t0
    return total


def folder_runs(mood, name: str, files: list[Path], workers: list[int]) -> dict:
    out: dict = {"files": len(files)}
    segments = None
    for n in workers:
        mood.num_workers = n
        table, seconds = timed(mood.process_files, files, errors="report")
        scored = int(table["valence"].notna().sum())
        segments = scored if segments is None else segments
        if scored != segments:
            raise SystemExit(f"{name}: {n} workers gave {scored} segments, 1 worker {segments}")
        out[f"workers_{n}"] = {"seconds": round(seconds, 2), "files_per_s": round(len(files) / seconds, 2),
                               "segments": scored, "ms_per_segment": round(1000 * seconds / max(scored, 1), 1),
                               "failed_files": int(table["error"].notna().sum())}
        print(f"  {name}: {n} worker(s) {seconds:.1f} s, {len(files) / seconds:.2f} files/s", flush=True)
        if n == 1:
            waves = segments_of(files, mood.vad)
            bare = bare_seconds(mood.model, waves)
            out["bare"] = {"segments": len(waves), "seconds": round(bare, 2),
                           "ms_per_segment": round(1000 * bare / max(len(waves), 1), 1)}
            out["overhead_vs_bare"] = round(seconds / bare, 3)
            print(f"  {name}: bare model {bare:.1f} s on {len(waves)} segments -> folder/bare "
                  f"{seconds / bare:.3f}", flush=True)
    mood.num_workers = 1
    return out


def interleaved(mood, files: list[Path], chunk: int) -> dict:
    """The API on ``chunk`` files (chunk=1: ``process_file``), then the bare forward of their segments, in turn."""
    api = bare = 0.0
    n = 0
    for i in range(0, len(files), chunk):
        part = files[i:i + chunk]
        _, seconds = timed(mood.process_file, part[0]) if chunk == 1 else timed(mood.process_files, part)
        api += seconds
        waves = segments_of(part, mood.vad)
        bare += bare_seconds(mood.model, waves)
        n += len(waves)
    return {"files": len(files), "chunk": chunk, "segments": n, "api_ms_per_segment": round(1000 * api / n, 1),
            "bare_ms_per_segment": round(1000 * bare / n, 1), "ratio": round(api / bare, 3)}


def cli_per_file(files: list[Path]) -> dict:
    """One program start per file, as a researcher without the API had to."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "live_cli": lambda f: [sys.executable, "run_monitor.py", "--input", str(f), "--fast", "--no-store",
                                   "--no-dashboard", "--jsonl", str(Path(tmp) / f"{f.stem}.jsonl")],
            "analyze_cli": lambda f: [sys.executable, "run_monitor.py", "analyze", str(f), "--out",
                                      str(Path(tmp) / f"{f.stem}.csv"), "--no-progress"],
        }
        for name, command in commands.items():
            times = []
            for f in files:
                t0 = time.perf_counter()
                subprocess.run(command(f), cwd=REPO, check=True, capture_output=True, timeout=600)
                times.append(time.perf_counter() - t0)
            mean = statistics.fmean(times)
            out[name] = {"files": len(files), "seconds_per_file": round(mean, 2),
                         "files_per_s": round(1 / mean, 3)}
            print(f"  {name}: {mean:.1f} s per file", flush=True)
    return out


def live_pipeline(mood, files: list[Path]) -> dict:
    """The files replayed as one session (1 s apart) through the live pipeline, as fast as it goes."""
    import soundfile as sf

    from monitor.audio.io import read_audio
    from monitor.audio.sources import FileSource
    from monitor.live.pipeline import MonitorConfig, MonitorPipeline
    from monitor.live.projection import Projector
    from monitor.live.worker import WorkerConfig

    gap = np.zeros(16000, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "session.wav"
        sf.write(str(wav), np.concatenate([x for f in files for x in (read_audio(f), gap)]), 16000)
        pipeline = MonitorPipeline(FileSource(wav, realtime=False), mood.model,
                                   Projector(mood.bundle.reducer, mood.bundle.labels),
                                   config=MonitorConfig(worker=WorkerConfig(device=mood.device)))
        summary, seconds = timed(pipeline.run)
    return {"files": len(files), "segments": summary.points, "seconds": round(seconds, 2),
            "ms_per_segment": round(1000 * seconds / max(summary.points, 1), 1)}


def one_array(mood, clip: Path, repeats: int) -> dict:
    from monitor.audio.io import read_audio

    audio = read_audio(clip)[: 3 * 16000]
    waves = segments_of([clip], mood.vad)[:1]
    mood.process_signal(audio, 16000)  # warm
    api, bare = [], []
    for _ in range(repeats):
        api.append(timed(mood.process_signal, audio, 16000)[1])
        bare.append(bare_seconds(mood.model, [w[: 3 * 16000] for w in waves]))
    return {"seconds_of_audio": 3.0, "repeats": repeats, "ms_median": round(1000 * statistics.median(api), 1),
            "bare_model_ms_median": round(1000 * statistics.median(bare), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path,
                   default=Path(os.environ.get("MOOD_MONITOR_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    p.add_argument("--limit", type=int, help="at most this many files per corpus (spread over it)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cli-files", type=int, default=5, help="RAVDESS files run one CLI call each (default: 5)")
    p.add_argument("--interleaved-files", type=int, default=120)
    p.add_argument("--live-files", type=int, default=60)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "api.json")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "benchmarks" / "api.md")
    args = p.parse_args(argv)

    import torch

    from monitor import MoodModel

    load_start = os.getloadavg()
    mood, load_s = timed(MoodModel.from_pretrained, "default", device="cpu", progress=False)
    report: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_start": [round(x, 2) for x in load_start]},
        "model": mood.model_id, "model_load_s": round(load_s, 2), "corpora": {},
    }
    ravdess = corpus_files(args.data_root / "ravdess", None)
    for name in args.corpora:
        root = args.data_root / name
        if not root.is_dir():
            print(f"skipping {name}: not at {root}", flush=True)
            continue
        print(f"{name}:", flush=True)
        report["corpora"][name] = folder_runs(mood, name, corpus_files(root, args.limit), args.workers)
    picks = [ravdess[int(i)] for i in np.linspace(0, len(ravdess) - 1, args.interleaved_files)]
    print("interleaved folder chunks / bare model:", flush=True)
    report["interleaved"] = interleaved(mood, picks, chunk=24)
    print(f"  {report['interleaved']}", flush=True)
    print("single process_file calls / bare model:", flush=True)
    report["single_files"] = interleaved(mood, picks[:40], chunk=1)
    print(f"  {report['single_files']}", flush=True)
    print("live pipeline:", flush=True)
    report["live_pipeline"] = live_pipeline(mood, picks[: args.live_files])
    print(f"  {report['live_pipeline']}", flush=True)
    print("one 3 s array:", flush=True)
    report["one_array"] = one_array(mood, ravdess[0], repeats=30)
    print(f"  {report['one_array']}", flush=True)
    print("one CLI call per file:", flush=True)
    cli_picks = [ravdess[int(i)] for i in np.linspace(0, len(ravdess) - 1, args.cli_files)]
    report["cli_per_file"] = cli_per_file(cli_picks)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    table = markdown(report)
    write_results(report, args.out, args.table, table)
    print(table)
    return 0


def targets(report: dict) -> dict:
    """The issue's targets: folder >= 10x one CLI call per file on RAVDESS; folder <= 1.3x the bare model."""
    out: dict = {}
    rav = report["corpora"].get("ravdess")
    cli = report["cli_per_file"]["live_cli"]["files_per_s"]
    if rav:
        speedup = rav["workers_1"]["files_per_s"] / cli
        out["ravdess_folder_vs_cli_per_file"] = {"value": round(speedup, 1), "target": f">= {TARGET_SPEEDUP:g}",
                                                 "met": speedup >= TARGET_SPEEDUP}
        out["ravdess_folder_vs_bare_model"] = {"value": rav["overhead_vs_bare"], "target": f"<= {TARGET_OVERHEAD}",
                                               "met": rav["overhead_vs_bare"] <= TARGET_OVERHEAD}
    ratio = report["interleaved"]["ratio"]
    out["interleaved_folder_vs_bare_model"] = {"value": ratio, "target": f"<= {TARGET_OVERHEAD}",
                                               "met": ratio <= TARGET_OVERHEAD}
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Researcher's API benchmark",
        "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"Python {m['python']}; load average {m['load_average_start'][0]} at the start, "
        f"{m['load_average_end'][0]} at the end (the machine was shared; ratios are within this run). "
        f"Model: shipped default (`{report['model']}`), CPU; loading it took {report['model_load_s']} s.",
        "",
        "## Folders: `process_folder` against the bare model",
        "",
        "| corpus | files | segments | 1 worker: files/s | ms/segment | 2 workers: files/s | bare model ms/segment "
        "| folder (1 worker) / bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in report["corpora"].items():
        w1, w2 = c["workers_1"], c.get("workers_2")
        lines.append(f"| {name} | {c['files']} | {w1['segments']} | {w1['files_per_s']} | {w1['ms_per_segment']} "
                     f"| {w2['files_per_s'] if w2 else '-'} | {c['bare']['ms_per_segment']} "
                     f"| {c['overhead_vs_bare']} |")
    i, one, live, a = report["interleaved"], report["single_files"], report["live_pipeline"], report["one_array"]
    cli = report["cli_per_file"]
    lines += [
        "",
        "2 workers: wall time as a user sees it, the start of two fresh processes (each loads the model) included.",
        "",
        "## Per segment, per file, per call",
        "",
        "| what | measure |",
        "|---|---|",
        f"| `process_files` on {i['chunk']} files at a time, interleaved with the bare model ({i['files']} RAVDESS "
        f"files, {i['segments']} segments) | {i['api_ms_per_segment']} ms vs {i['bare_ms_per_segment']} ms per "
        f"segment: {i['ratio']}x |",
        f"| single `process_file` calls, interleaved with the bare model ({one['files']} RAVDESS files) | "
        f"{one['api_ms_per_segment']} ms vs {one['bare_ms_per_segment']} ms per segment: {one['ratio']}x (one "
        "call's fixed costs: reading, VAD and speech gate, the table) |",
        f"| live pipeline, {live['files']} RAVDESS clips replayed as one session with --fast | "
        f"{live['ms_per_segment']} ms per segment ({live['segments']} segments in {live['seconds']} s) |",
        f"| `process_signal` on one 3 s array (median of {a['repeats']}) | {a['ms_median']} ms "
        f"(bare model: {a['bare_model_ms_median']} ms) |",
        f"| one CLI call per file: `mood-monitor --input F --fast --jsonl ...` ({cli['live_cli']['files']} files) | "
        f"{cli['live_cli']['seconds_per_file']} s per file ({cli['live_cli']['files_per_s']} files/s) |",
        f"| one CLI call per file: `mood-monitor analyze F --out ...` | {cli['analyze_cli']['seconds_per_file']} s "
        f"per file |",
        "",
        "## Targets",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    names = {"ravdess_folder_vs_cli_per_file": "RAVDESS folder (1 worker) vs one CLI call per file, speed-up",
             "ravdess_folder_vs_bare_model": "RAVDESS folder (1 worker) time per segment / bare model",
             "interleaved_folder_vs_bare_model": "RAVDESS files 24 at a time / bare model, interleaved"}
    for key, t in report["targets"].items():
        lines.append(f"| {names[key]} | {t['value']} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "Reproduce: `python benchmarks/bench_api.py` (JSON: [api.json](api.json)).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
