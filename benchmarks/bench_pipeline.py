"""Pipeline latency against bare model forward time, and concurrent real-time streams per machine.

For each model (the shipped default bundle, and the WavLM Base+ architecture
with random weights, which cost the same compute as trained ones):

1. latency: the VAD segments of a session of real RAVDESS clips go one by
   one through the pipeline's worker and dispatch (segment closed -> point
   emitted), alternating with the bare backbone forward on the same segment;
   the session is also replayed in real time end to end, for the latency a
   user sees.
2. saturated throughput: all segments queued at once; seconds of speech the
   worker embeds per second of wall time = real-time streams one machine can
   carry if everyone spoke all the time (an upper bound).
3. concurrent streams: N real-time streams (each its own source and VAD
   thread) share one worker for the length of the session; the check passes
   when latency stays bounded and no backlog is left.

Writes JSON and a markdown table. Ratios, not absolute times, are the figures
to compare across machines.

    python benchmarks/bench_pipeline.py                 # everything, ~10 min on 2 cores
    python benchmarks/bench_pipeline.py --models default --clips 8 --streams 0   # quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from results import write_results

REPO = Path(__file__).resolve().parents[1]
LABELS = ("neutral", "happy", "sad", "angry")


def session_clips(data_root: Path, n: int) -> list[Path]:
    """One clip per actor, cycling emotions, so the session has varied voices and moods."""
    clips = []
    for i in range(n):
        actor = data_root / "ravdess" / f"Actor_{i % 24 + 1:02d}"
        files = sorted(actor.glob("*.wav"))
        if not files:
            raise SystemExit(f"no RAVDESS clips under {actor}; pass --data-root")
        clips.append(files[(i * 7) % len(files)])
    return clips


def write_session(clips: list[Path], gap_s: float, path: Path, rotate: int = 0) -> float:
    from monitor.audio.io import read_audio

    order = clips[rotate:] + clips[:rotate]
    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    audio = np.concatenate([x for c in order for x in (read_audio(c), gap)])
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    return len(audio) / 16000


def build(kind: str, precision: str):
    """(EmotionModel, Projector, description) for a benchmark model."""
    from monitor.live.projection import Projector

    from monitor.model.bundle import SHIPPED_BUNDLES, load_bundle

    if kind == "default" or kind in SHIPPED_BUNDLES:
        bundle = load_bundle(kind)
        model = bundle.build_model(device="cpu", precision=precision)
        name = "shipped default" if kind == "default" else f"shipped {kind}"
        return model, Projector(bundle.reducer, bundle.labels), f"{name} ({bundle.backbone.get('kind')}, {precision})"
    if kind == "wavlm-base-plus":
        from transformers import WavLMConfig, WavLMModel

        from calibration.anchors import anchors_for
        from calibration.reducer import AnchoredReducer
        from calibration.speaker import FeatureNormalizer
        from monitor.model.wavlm import WavLMBackbone
        from monitor.model.head import EmotionHead
        from monitor.model.emotion import EmotionModel

        torch.manual_seed(0)
        backbone = WavLMBackbone(WavLMModel(WavLMConfig()).eval(), normalize_waveform=False,
                                 source="random WavLM Base+ config")
        if precision == "int8":
            backbone.quantize_int8()
        model = EmotionModel(backbone, EmotionHead(backbone.feature_dim, len(LABELS)), FeatureNormalizer("none"),
                             LABELS, precision="fp32" if precision == "int8" else precision).eval()
        rng = np.random.default_rng(0)
        X = np.concatenate([rng.normal(i, 1.0, size=(60, 100)) for i in range(len(LABELS))]).astype(np.float32)
        reducer = AnchoredReducer(anchors=anchors_for(LABELS), n_epochs=30, random_state=0)
        reducer.fit(X, np.repeat(LABELS, 60))
        reducer.warm_up()
        return model, Projector(reducer, LABELS), f"WavLM Base+ architecture, random weights, {precision}"
    raise SystemExit(f"unknown model {kind!r}")


def bare_forward_seconds(model, audio: np.ndarray, repeats: int = 3) -> float:
    """Median time of the backbone alone on one segment: the floor the pipeline is compared with."""
    from monitor.model.wavlm import WavLMBackbone

    backbone = model.backbone
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            if isinstance(backbone, WavLMBackbone):
                batch, _ = backbone.prepare([audio])
                backbone.encoder(batch, output_hidden_states=True)
            elif hasattr(backbone, "extract"):  # eGeMAPS: openSMILE on the segment
                backbone.extract(audio)
            else:  # Whisper: log-mel, the encoder on the segment's own frames, pooling
                backbone.features([audio])
            times.append(time.perf_counter() - started)
    return float(np.median(times))


class Collector:
    def __init__(self):
        self.points = []

    def start(self, session, heatmap):
        pass

    def point(self, point):
        self.points.append(point)

    def mark(self, mark):
        pass

    def status(self, status):
        pass

    def close(self):
        pass


def vad_segments(session_wav: Path) -> list:
    from monitor.audio.segmenter import segment_file

    return segment_file(session_wav)


def paired_latency(model, projector, session_wav: Path, segments: list, repeats: int = 2) -> dict:
    """Per segment, alternately: the bare backbone forward, then the pipeline's path for the same segment.

    The pipeline path is the real one: the worker thread (queue, batching,
    backbone, normalisation, head) and the pipeline's dispatch (projector,
    heat map, outputs). Alternating the two controls for a machine whose
    speed drifts during the run.
    """
    from dataclasses import replace

    from monitor.live.pipeline import MonitorPipeline
    from monitor.audio.sources import FileSource

    pipeline = MonitorPipeline(FileSource(session_wav, realtime=False), model, projector, sinks=[Collector()])
    pipeline.warm_up()
    pipeline.worker.start()
    latency, bare = [], []

    def through_pipeline(segment) -> float:
        pipeline.worker.submit(replace(segment, closed_at=time.monotonic()))
        item = pipeline.worker.results.get()
        pipeline._dispatch(item)
        return (time.monotonic() - item.segment.closed_at) * 1000

    for segment in segments:
        bare_forward_seconds(model, segment.audio, repeats=1)  # first use of a shape sets up kernels: not timed
        for r in range(repeats):  # A B, then B A: neither side always goes first
            if r % 2 == 0:
                bare.append(bare_forward_seconds(model, segment.audio, repeats=1) * 1000)
                latency.append(through_pipeline(segment))
            else:
                latency.append(through_pipeline(segment))
                bare.append(bare_forward_seconds(model, segment.audio, repeats=1) * 1000)
    pipeline.worker.close()
    lat, fwd = np.asarray(latency), np.asarray(bare)
    return {
        "segments": len(segments),
        "repeats": repeats,
        "segment_seconds_p50": float(np.median([s.duration for s in segments])),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "bare_forward_ms_p50": float(np.percentile(fwd, 50)),
        "bare_forward_ms_p95": float(np.percentile(fwd, 95)),
        "latency_over_forward_p50": float(np.percentile(lat, 50) / np.percentile(fwd, 50)),
        "per_segment_ratio_p50": float(np.median(lat / fwd)),
        "overhead_ms_p50": float(np.median(lat - fwd)),
    }


def replay_latency(model, projector, session_wav: Path) -> dict:
    """The whole live path on a real-time replay: what a user sees."""
    from monitor.live.pipeline import MonitorPipeline
    from monitor.audio.sources import FileSource

    sink = Collector()
    summary = MonitorPipeline(FileSource(session_wav, realtime=True), model, projector, sinks=[sink]).run()
    return {"points": summary.points, "speech_seconds": summary.speech_seconds,
            "latency_ms_p50": summary.latency_p50_ms, "latency_ms_p95": summary.latency_p95_ms,
            "dropped_frames": summary.dropped_frames}


def saturated_throughput(model, session_wav: Path, max_batch: int, speakers=None) -> dict:
    """All segments queued at once: seconds of speech embedded per wall second (``speakers``: with attribution,
    a ``SpeakerAttributor`` the worker calls on the same batches)."""
    from monitor.live.worker import EmbeddingWorker, WorkerConfig

    segments = vad_segments(session_wav)
    worker = EmbeddingWorker(model, WorkerConfig(max_batch=max_batch, queue_size=len(segments) + 1),
                             speakers=speakers)
    for s in segments:
        worker.submit(s)
    started = time.perf_counter()
    worker.start()
    worker.close()
    done = 0
    while worker.results.get() is not None:
        done += 1
    wall = time.perf_counter() - started
    speech = sum(s.duration for s in segments)
    return {"segments": done, "speech_seconds": speech, "wall_seconds": wall, "streams_if_all_speech": speech / wall,
            "max_batch": max_batch}


def concurrent_streams(model, projector, wavs: list[Path], max_batch: int, max_wait_ms: float) -> dict:
    """N real-time streams share one worker; is the backlog bounded?"""
    from monitor.audio.segmenter import VadSegmenter
    from monitor.audio.sources import FileSource
    from monitor.live.worker import EmbeddingWorker, WorkerConfig

    worker = EmbeddingWorker(model, WorkerConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=256))
    max_depth = [0]
    streams_done = threading.Barrier(len(wavs) + 1)

    def stream(wav: Path):
        segmenter = VadSegmenter()
        for frame in FileSource(wav, realtime=True).frames():
            for s in segmenter.push(frame):
                worker.submit(s)
                max_depth[0] = max(max_depth[0], worker.segments.qsize())
        for s in segmenter.flush():
            worker.submit(s)
        streams_done.wait()

    threads = [threading.Thread(target=stream, args=(w,), daemon=True) for w in wavs]
    worker.start()
    started = time.monotonic()
    for t in threads:
        t.start()
    latencies = []
    closer = threading.Thread(target=lambda: (streams_done.wait(), worker.close()), daemon=True)
    closer.start()
    audio_end = None
    while True:
        item = worker.results.get()
        if item is None:
            break
        projector(item)
        latencies.append((time.monotonic() - item.segment.closed_at) * 1000)
        if audio_end is None and not any(t.is_alive() for t in threads):
            audio_end = time.monotonic()
    finished = time.monotonic()
    lat = np.asarray(latencies)
    session_seconds = sf.info(str(wavs[0])).duration
    return {
        "streams": len(wavs),
        "session_seconds": session_seconds,
        "wall_seconds": finished - started,
        "drain_after_audio_end_s": finished - started - session_seconds,
        "segments": len(latencies),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_max": float(lat.max()),
        "max_queue_depth": int(max_depth[0]),
        "failed_segments": worker.failed_segments,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding ravdess/")
    p.add_argument("--models", default="default,egemaps,wavlm-base-plus",
                   help="comma list: default, a shipped bundle's name (egemaps, whisper), wavlm-base-plus")
    p.add_argument("--wavlm-precisions", default="fp32,int8",
                   help="CPU precisions to run WavLM Base+ and shipped transformer backbones in")
    p.add_argument("--clips", type=int, default=16, help="RAVDESS clips in the replayed session")
    p.add_argument("--gap", type=float, default=1.0, help="silence between clips, seconds")
    p.add_argument("--streams", type=int, default=5, help="concurrent real-time streams to check (0 = skip)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "pipeline.json")
    p.add_argument("--table", type=Path, default=REPO / "docs" / "benchmarks" / "pipeline.md")
    args = p.parse_args(argv)

    clips = session_clips(args.data_root, args.clips)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    wavs = [tmp / f"session{i}.wav" for i in range(max(args.streams, 1))]
    for i, wav in enumerate(wavs):
        write_session(clips, args.gap, wav, rotate=i * 3 % len(clips))

    runs = []
    for kind in args.models.split(","):
        precisions = args.wavlm_precisions.split(",") if kind in ("wavlm-base-plus", "whisper") else ["fp32"]
        for precision in precisions:
            model, projector, description = build(kind, precision)
            print(f"== {description}", flush=True)
            result = {"model": kind, "precision": precision, "description": description,
                      "latency": paired_latency(model, projector, wavs[0], vad_segments(wavs[0]))}
            print(json.dumps(result["latency"], indent=1), flush=True)
            result["replay"] = replay_latency(model, projector, wavs[0])
            print(json.dumps(result["replay"], indent=1), flush=True)
            result["saturated"] = saturated_throughput(model, wavs[0], args.max_batch)
            print(json.dumps(result["saturated"], indent=1), flush=True)
            if args.streams:
                result["concurrent"] = concurrent_streams(model, projector, wavs[: args.streams], args.max_batch, 10.0)
                print(json.dumps(result["concurrent"], indent=1), flush=True)
            runs.append(result)

    report = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available()},
        "session": {"clips": len(clips), "gap_s": args.gap, "seconds": sf.info(str(wavs[0])).duration},
        "targets": {"latency_over_forward_p50_max": 1.10, "concurrent_streams_min": 5},
        "runs": runs,
        "command": "python benchmarks/bench_pipeline.py " + " ".join(argv or []),
    }
    table = markdown(report)
    write_results(report, args.out, args.table, table)
    print(table)
    return 0


def markdown(report: dict) -> str:
    rows = ["| model | segments | forward p50 | latency p50 | latency / forward (p50) "
            "| real-time replay latency p50 / p95 | streams if all speech "
            "| concurrent streams: p95 latency, backlog drained after |",
            "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lat, sat = r["latency"], r["saturated"]
        conc = r.get("concurrent")
        conc_text = (f"{conc['streams']} streams: {conc['latency_ms_p95']:.0f} ms, "
                     f"{conc['drain_after_audio_end_s']:.1f} s" if conc else "not run")
        rep = r["replay"]
        rows.append(f"| {r['description']} | {lat['segments']} | {lat['bare_forward_ms_p50']:.0f} ms | "
                    f"{lat['latency_ms_p50']:.0f} ms | {lat['latency_over_forward_p50']:.3f} | "
                    f"{rep['latency_ms_p50']:.0f} / {rep['latency_ms_p95']:.0f} ms | "
                    f"{sat['streams_if_all_speech']:.1f} | {conc_text} |")
    m = report["machine"]
    return ("# Pipeline benchmark\n\n"
            f"Machine: {m['processor']}, {m['cpu_threads']} torch threads, torch {m['torch']}, CUDA: {m['cuda']}. "
            f"Session: {report['session']['clips']} RAVDESS clips, {report['session']['seconds']:.0f} s, "
            "replayed in real time.\n\n"
            + "\n".join(rows) + "\n\nReproduce: `" + report["command"].strip() + "`\n")


if __name__ == "__main__":
    raise SystemExit(main())
