"""``mood-monitor`` / ``python run_monitor.py``: run a live (or replayed) mood-monitoring session.

The same program hosts the other everyday commands as subcommands
(``mood-monitor report``, ``mood-monitor data``, ``mood-monitor analyze``);
each is also its module's own ``python -m``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from monitor.audio.segmenter import VadConfig
from monitor.live.heatmap import HeatmapConfig
from monitor.live.worker import WorkerConfig

if TYPE_CHECKING:  # the heavy modules (torch, the store) load only when a session starts, so --help is quick
    import numpy as np

    from calibration.speaker import SpeakerBaseline
    from monitor.audio.sources import AudioSource
    from monitor.history.store import Store
    from monitor.live.events import PointSink
    from monitor.live.pipeline import MonitorPipeline
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.voiceprint import SpeakerEncoder
    from monitor.model.bundle import ModelBundle
    from monitor.model.emotion import EmotionModel

log = logging.getLogger("monitor")

EXIT_OK, EXIT_ENDED_EARLY, EXIT_SETUP, EXIT_NOT_STORED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """\
exit status:
  0    the session ran to its end (or Ctrl-C ended it) and every point reached every output
  1    the session ended early: the input broke off (a truncated file, an unplugged microphone)
  2    setup problem, nothing recorded (bad input, model, port, store; the message says which)
  3    points or marks were not stored (or not written to --jsonl): the summary says how many
  130  aborted by a second Ctrl-C (or SIGTERM): queued speech was not analysed
"""

DESCRIPTION = """\
Listen to speech (a microphone, or a recording with --input), place every
stretch of speech on Russell's valence-arousal circumplex, and keep a rolling
heat map of where the session has been.

examples:
  mood-monitor                                   # default microphone, shipped model
  mood-monitor --list-devices                    # which microphones exist
  mood-monitor --device 2                        # use input device 2
  mood-monitor --input session.wav --fast --jsonl -   # replay a file as fast as possible, points to stdout
  mood-monitor --model my_bundle/ --compute cuda # your own model bundle on a GPU

other commands (each has its own --help):
  mood-monitor report --patient P-017 --days 14 --out p017.pdf   # a patient's days and weeks
  mood-monitor data export --patient P-017 --out p017/           # list, export, assign, delete stored data
  mood-monitor analyze recordings/ --out results.csv             # score a folder of recordings into a table
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mood-monitor", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES)
    src = p.add_argument_group("audio input")
    src.add_argument("--input", metavar="FILE", help="replay a WAV/FLAC/OGG recording instead of the microphone "
                     "(any sample rate or channel count); '-', a pipe or a FIFO is read as a stream (WAV or Ogg)")
    src.add_argument("--fast", action="store_true",
                     help="with --input: run as fast as possible instead of in real time")
    src.add_argument("--device", metavar="ID",
                     help="microphone: device number or name (see --list-devices); default: the system's")
    src.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")

    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="BUNDLE",
                       help="model bundle: a shipped one by name (default, egemaps), a bundle folder, or a Hugging "
                            "Face Hub repo id such as org/name (default: the shipped default model)")
    model.add_argument("--compute", default="auto", metavar="DEV",
                       help="where the model runs: auto (CUDA if present, else CPU), cpu, cuda, cuda:1 (default: auto)")
    model.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                       help="auto = bf16/fp16 on a GPU, fp32 on the CPU; int8 = quantised WavLM feed-forward "
                            "layers for faster CPU inference (default: auto)")
    model.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for the model (default: PyTorch's choice; use 1 per session when one "
                            "machine runs several monitors)")
    model.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="segments embedded together at most (default: 8)")
    model.add_argument("--max-wait-ms", type=float, default=0.0, metavar="MS",
                       help="how long the worker waits for more segments to batch; 0 = take only what is already "
                            "waiting, the lowest latency for one speaker (default: 0)")

    vad = p.add_argument_group("speech segmentation (voice activity detection)")
    vad.add_argument("--vad-aggressiveness", type=int, default=2, choices=[0, 1, 2, 3],
                     help="0 keeps most sound as speech, 3 is strictest (default: 2)")
    vad.add_argument("--frame-ms", type=int, default=30, choices=[10, 20, 30], help="VAD frame length (default: 30)")
    vad.add_argument("--start-padding-ms", type=int, default=300, metavar="MS",
                     help="look-back window that decides speech onset, kept as pre-roll (default: 300)")
    vad.add_argument("--end-padding-ms", type=int, default=600, metavar="MS",
                     help="silence that ends a segment (default: 600)")
    vad.add_argument("--min-segment", type=float, default=0.5, metavar="S",
                     help="drop speech shorter than this (default: 0.5 s)")
    vad.add_argument("--max-segment", type=float, default=6.0, metavar="S",
                     help="cut longer speech into windows of this length, so a monologue still yields points "
                          "(default: 6 s)")
    vad.add_argument("--speech-gate", choices=["on", "off"], default="on",
                     help="check that each segment sounds like a speaking voice (a moving pitch), so tones, hum, "
                          "music and noise the VAD lets through are skipped and counted instead of becoming "
                          "confident points (default: on)")

    hm = p.add_argument_group("heat map")
    hm.add_argument("--heatmap-bins", type=int, default=48, metavar="N", help="cells per axis (default: 48)")
    hm.add_argument("--heatmap-mode", choices=["decay", "window"], default="decay",
                    help="decay: old speech fades with a half-life; window: only the last --window seconds count")
    hm.add_argument("--half-life", type=float, default=120.0, metavar="S", help="decay half-life (default: 120 s)")
    hm.add_argument("--window", type=float, default=300.0, metavar="S", help="window length (default: 300 s)")
    hm.add_argument("--smoothing", type=float, default=1.0, metavar="CELLS",
                    help="Gaussian blur of the map (default: 1 cell; 0 = none)")

    dash = p.add_argument_group("dashboard (websocket + web page, same port)")
    dash.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard server")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default: 127.0.0.1, this computer only; 0.0.0.0 exposes clinical data "
                           "to the network)")
    dash.add_argument("--port", type=int, default=8765,
                      help="port for the page and the websocket (default: 8765; 0 = any free port)")
    dash.add_argument("--token",
                      help="access token the page and websocket require (default: a new random one, printed at start)")
    dash.add_argument("--certfile", help="TLS certificate (PEM) to serve https/wss")
    dash.add_argument("--keyfile", help="TLS private key (PEM) for --certfile")
    dash.add_argument("--linger", type=float, default=0.0, metavar="S",
                      help="keep the dashboard up this long after the session ends (Ctrl-C quits sooner; default: 0)")

    store = p.add_argument_group("storage (every point is kept per patient; no audio unless asked)")
    store.add_argument("--patient", metavar="ID",
                       help="pseudonymous patient id the session belongs to (no names needed)")
    store.add_argument("--db", metavar="PATH",
                       help="SQLite file to store sessions in (default: DATA_DIR/mood-monitor.sqlite)")
    store.add_argument("--data-dir", metavar="DIR",
                       help="data folder (default: $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor)")
    store.add_argument("--no-store", action="store_true",
                       help="keep nothing on disk (points still go to --jsonl and the dashboard)")
    store.add_argument("--keep-audio", action="store_true",
                       help="also store each speech segment's audio (off by default: clinical data)")
    store.add_argument("--enroll", metavar="FILE",
                       help="with --patient: record FILE (30-60 s of calm speech) as the patient's baseline and "
                            "voiceprint, then exit unless --input is also given; later sessions reuse them")

    voices = p.add_argument_group("whose voice counts (speaker attribution, with a patient voiceprint from --enroll)")
    voices.add_argument("--clinician", metavar="ID",
                        help="the clinician in the room (pseudonymous id): their enrolled voiceprint helps tell "
                             "their speech from the patient's")
    voices.add_argument("--enroll-clinician", metavar="FILE",
                        help="with --clinician: record FILE (30-60 s of the clinician's speech) as their voiceprint, "
                             "then exit unless --input is also given; every session naming --clinician ID reuses it")
    voices.add_argument("--count", choices=["patient", "all"], default="all",
                        help="all: every voice counts, each point labelled patient/clinician/unknown when the patient "
                             "has a voiceprint (default, because today's speaker encoder leaves most of a patient's "
                             "emotional speech 'unknown': docs/store.md); patient: only segments in the patient's "
                             "voice go into the heat map, summaries and store")

    out = p.add_argument_group("outputs")
    out.add_argument("--jsonl", metavar="PATH", help="write one JSON object per point to PATH ('-' = stdout)")
    out.add_argument("--summary-json", metavar="PATH", help="write the session summary as JSON to PATH")
    out.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    return p


def _configs(args: argparse.Namespace) -> tuple[VadConfig, WorkerConfig, HeatmapConfig]:
    vad = VadConfig(aggressiveness=args.vad_aggressiveness, frame_ms=args.frame_ms,
                    start_padding_ms=args.start_padding_ms, end_padding_ms=args.end_padding_ms,
                    min_segment_s=args.min_segment, max_segment_s=args.max_segment,
                    speech_gate=args.speech_gate == "on")
    worker = WorkerConfig(device=args.compute, precision=args.precision, max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms)
    heatmap = HeatmapConfig(bins=args.heatmap_bins, mode=args.heatmap_mode, half_life_s=args.half_life,
                            window_s=args.window, smoothing_sigma=args.smoothing)
    return vad, worker, heatmap


def _open_source(args: argparse.Namespace, frame_ms: int) -> AudioSource:
    from monitor.audio.sources import FileSource, MicrophoneSource

    if args.input:
        return FileSource(args.input, frame_ms=frame_ms, realtime=not args.fast)
    device = args.device
    if device is not None and str(device).isdigit():
        device = int(device)
    return MicrophoneSource(device=device, frame_ms=frame_ms)


@contextlib.contextmanager
def graceful_interrupts(pipeline: MonitorPipeline) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) ends the session gracefully: queues drain, outputs flush. A second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    signals = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals == 1 and not pipeline.stopping:
            log.info("ending the session: finishing queued speech (Ctrl-C again to abort)")
            pipeline.stop()
        elif signals <= 2:
            raise KeyboardInterrupt
        else:  # the abort is joining the model's thread: a bounded wait, not to be cut short again
            log.info("aborting: waiting for the model to finish the segment in hand")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class _Setup:
    """What a session needs, prepared before anything is recorded."""

    bundle: ModelBundle
    model: EmotionModel
    device: str
    store: Store | None
    baseline: SpeakerBaseline | None
    source: AudioSource | None  # None: enrolment only, nothing to monitor
    speakers: SpeakerAttributor | None = None  # None: no patient voiceprint, every voice counts


class _SetupError(Exception):
    """A problem found before the session starts (exit 2, message on stderr)."""


def _prepare(args: argparse.Namespace, vad: VadConfig, worker: WorkerConfig) -> _Setup:
    from monitor.audio.io import AudioInputError
    from monitor.audio.segmenter import segment_file
    from monitor.history.store import Store
    from monitor.model.base import BackboneLoadError
    from monitor.model.bundle import BundleError, load_bundle
    from monitor.model.emotion import choose_device
    from monitor.model.enrolment import EnrolmentError, enroll
    from monitor.model.voiceprint import SpeakerEncoderError

    try:
        _check_compute(worker.device)
        bundle = load_bundle(args.model)
        device = choose_device(worker.device)
        model = bundle.build_model(device=str(device), precision=worker.precision)
        store = None if args.no_store else Store.open(args.db or _default_db(args.data_dir))
        baseline = None
        if args.enroll:
            assert store is not None  # --enroll with --no-store is refused while parsing
            segments = [s.audio for s in segment_file(args.enroll, vad)]
            baseline = enroll(model, segments, model_id=bundle.model_id, source=Path(args.enroll).name)
            store.set_baseline(args.patient, baseline.to_json(), bundle.model_id)
            kept = "baseline and voiceprint"
            try:
                _enroll_voice(store, "patient", args.patient, segments, args.enroll, str(device))
            except SpeakerEncoderError as exc:  # the baseline is what calibration needs; a voiceprint is extra
                log.warning("no voiceprint taken for patient %s (%s); every voice will count", args.patient, exc)
                kept = "baseline"
            print(f"patient {args.patient} enrolled from {baseline.seconds:.0f} s of speech; later sessions "
                  f"with --patient {args.patient} use this {kept}", file=sys.stderr)
        elif args.patient and store is not None and model.normalizer.mode == "enrolment":
            baseline = store.current_baseline(args.patient, bundle.model_id)
        if args.enroll_clinician:
            assert store is not None  # refused while parsing
            segments = [s.audio for s in segment_file(args.enroll_clinician, vad)]
            _enroll_voice(store, "clinician", args.clinician, segments, args.enroll_clinician, str(device))
            print(f"clinician {args.clinician} enrolled; later sessions with --clinician {args.clinician} use "
                  "this voiceprint", file=sys.stderr)
        enrolling = bool(args.enroll or args.enroll_clinician)
        monitoring = bool(args.input) or not enrolling
        speakers = _speaker_attributor(args, store, str(device)) if monitoring else None
        source = _open_source(args, vad.frame_ms) if monitoring else None
    except (AudioInputError, BundleError, BackboneLoadError, EnrolmentError, RuntimeError, ValueError,
            OSError) as exc:  # SpeakerEncoderError is a RuntimeError, VoiceprintError a ValueError
        raise _SetupError(str(exc)) from exc
    return _Setup(bundle, model, str(device), store, baseline, source, speakers)


_ENCODERS: dict[str, SpeakerEncoder] = {}


def _speaker_encoder(device: str) -> SpeakerEncoder:
    """The speaker encoder (loaded once per process and device: enrolment and the session share it)."""
    from monitor.model.voiceprint import ResemblyzerEncoder

    if device not in _ENCODERS:
        _ENCODERS[device] = ResemblyzerEncoder(device=device)
    return _ENCODERS[device]


def _enroll_voice(store: Store, role: str, owner: str, segments: Sequence[np.ndarray], source: str,
                  device: str) -> None:
    """Take and keep a voiceprint from enrolment segments (biometric: only in the 0600 store)."""
    from monitor.model.enrolment import enroll_voice

    voiceprint = enroll_voice(_speaker_encoder(device), segments, source=Path(source).name)
    store.set_voiceprint(role, owner, voiceprint)


def _speaker_attributor(args: argparse.Namespace, store: Store | None, device: str) -> SpeakerAttributor | None:
    """The session's attribution when the patient has a voiceprint in the store; None: every voice counts."""
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.voiceprint import RESEMBLYZER_NAME

    if store is None or not args.patient:
        if args.clinician:
            log.warning("--clinician %s is not used: without --patient and a store there is no patient voiceprint "
                        "to tell the voices apart; every voice counts", args.clinician)
        return None
    patient = store.voiceprint("patient", args.patient, RESEMBLYZER_NAME)
    clinician = store.voiceprint("clinician", args.clinician, RESEMBLYZER_NAME) if args.clinician else None
    if args.clinician and clinician is None:
        raise _SetupError(f"clinician {args.clinician} has no voiceprint in {store.path}; enrol them once with "
                          f"--clinician {args.clinician} --enroll-clinician FILE")
    if patient is None:
        log.info("patient %s has no voiceprint (enrol with --enroll): every voice counts", args.patient)
        return None
    return SpeakerAttributor(_speaker_encoder(device), patient, clinician, count=args.count)


def _check_compute(requested: str) -> None:
    """--compute cuda without a GPU: say so with this program's flag (--device is the microphone here)."""
    if not str(requested).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise _SetupError(f"--compute {requested} was asked for, but no CUDA GPU is available; use --compute cpu "
                          "(or auto, which picks a GPU when there is one)")


def _default_db(data_dir: str | None) -> Path:
    from monitor.history.store import default_db_path

    return default_db_path(data_dir)


def _build_pipeline(args: argparse.Namespace, setup: _Setup, source: AudioSource, vad: VadConfig,
                    worker: WorkerConfig, heatmap: HeatmapConfig) -> MonitorPipeline:
    """The session's pipeline with its outputs: JSONL, the store and the dashboard (started first)."""
    from monitor.live.events import SessionInfo
    from monitor.live.outputs import JsonlSink
    from monitor.live.pipeline import MonitorConfig, MonitorPipeline, new_session_id
    from monitor.live.projection import Projector
    from monitor.live.speakers import not_attributing

    bundle, model, baseline = setup.bundle, setup.model, setup.baseline
    config = MonitorConfig(vad=vad, worker=worker, heatmap=heatmap)
    settings = config.to_dict()
    settings["normalization"] = model.normalizer.mode
    settings["speaker_baseline"] = None if baseline is None else {
        "source": baseline.source, "created": baseline.created, "seconds": baseline.seconds}
    settings["speakers"] = setup.speakers.describe() if setup.speakers is not None else not_attributing()
    if setup.speakers is not None:
        settings["speakers"]["clinician_id"] = args.clinician
    session = SessionInfo(
        session_id=new_session_id(), started_at=time.time(), model_id=bundle.model_id, model_version=bundle.version,
        device=setup.device, labels=tuple(bundle.labels), source=source.description,
        settings=settings, patient_id=args.patient,
    )
    if model.normalizer.mode == "enrolment":
        log.info("speaker calibration: %s", "the patient's enrolment baseline" if baseline is not None
                 else "population statistics (no enrolment for this patient and model)")
    sinks: list[PointSink] = []
    if args.jsonl:
        sinks.append(JsonlSink(args.jsonl))
    if setup.store is not None:
        from monitor.history.sink import StoreSink

        sinks.append(StoreSink(setup.store, patient_id=args.patient, keep_audio=args.keep_audio))
    pipeline = MonitorPipeline(source, model, Projector(bundle.reducer, bundle.labels), sinks=sinks, config=config,
                               session=session, baseline=baseline, speakers=setup.speakers)
    if not args.no_dashboard:
        from monitor.serve.server import DashboardServer, ServerConfig

        server = DashboardServer(ServerConfig(host=args.host, port=args.port, token=args.token,
                                              certfile=args.certfile, keyfile=args.keyfile, linger_s=args.linger),
                                 store=setup.store, controls=pipeline)  # pause/resume/mark from the dashboard
        pipeline.add_sink(server, first=True)  # started first: a busy port must fail before the store records a session
    log.info("session %s: %s on %s, model %s", session.session_id, source.description, setup.device, bundle.model_id)
    return pipeline


def _run_session(args: argparse.Namespace, pipeline: MonitorPipeline) -> int:
    from monitor.live.pipeline import ModelWarmUpError, OutputStartError

    if not args.input:
        log.info("listening; press Ctrl-C to end the session")
    with graceful_interrupts(pipeline):
        try:
            summary = pipeline.run()
        except (OutputStartError, ModelWarmUpError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SETUP
        except KeyboardInterrupt:  # the second Ctrl-C: what was written is flushed, the queued rest is dropped
            print("aborted: queued speech was not analysed", file=sys.stderr)
            busy = pipeline.busy_threads()
            if busy:  # a stage stuck in native code: exiting through interpreter shutdown could abort the process
                log.warning("leaving without waiting for: %s", ", ".join(busy))
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            return EXIT_INTERRUPTED
    print(summary.format(), file=sys.stderr)
    if args.summary_json:
        from monitor.live.private import write_private_text

        write_private_text(args.summary_json, json.dumps(summary.to_dict(), indent=2))
    if not summary.outputs_complete:
        return EXIT_NOT_STORED
    return EXIT_ENDED_EARLY if summary.error else EXIT_OK


def _subcommands() -> dict[str, Callable[[Sequence[str] | None], int]]:
    from monitor import analyze
    from monitor.history import data, report

    return {"report": report.main, "data": data.main, "analyze": analyze.main}


SUBCOMMANDS = ("report", "data", "analyze")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommands()[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.fast and not args.input:
        parser.error("--fast only applies to --input replay")
    if args.list_devices:
        return _list_devices()
    try:
        vad, worker, heatmap = _configs(args)
    except ValueError as exc:
        parser.error(str(exc))
    _check_enrolment_args(parser, args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # weight-loading bars clutter the output
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        setup = _prepare(args, vad, worker)
    except _SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:  # Ctrl-C while loading the model or waiting for a FIFO's writer
        print("interrupted before the session started; nothing was recorded", file=sys.stderr)
        return EXIT_INTERRUPTED
    if setup.source is None:
        return EXIT_OK  # enrolment only
    return _run_session(args, _build_pipeline(args, setup, setup.source, vad, worker, heatmap))


def _check_enrolment_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Enrolment keeps what it takes in the store, with the person it names."""
    if args.enroll and not args.patient:
        parser.error("--enroll needs --patient ID: the baseline is kept with that patient")
    if args.enroll and args.no_store:
        parser.error("--enroll keeps the baseline in the store; it cannot be used with --no-store")
    if args.enroll_clinician and not args.clinician:
        parser.error("--enroll-clinician needs --clinician ID: the voiceprint is kept with that clinician")
    if args.enroll_clinician and args.no_store:
        parser.error("--enroll-clinician keeps the voiceprint in the store; it cannot be used with --no-store")


def _list_devices() -> int:
    from monitor.audio.io import AudioInputError
    from monitor.audio.sources import list_devices

    try:
        table = list_devices()
    except AudioInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    print(table)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
