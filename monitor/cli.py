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
from monitor.history.target import add_db_argument, store_target
from monitor.live.heatmap import HeatmapConfig
from monitor.live.worker import WorkerConfig
from monitor.options import (EXIT_ENDED_EARLY, EXIT_INTERRUPTED, EXIT_NOT_STORED, EXIT_OK, EXIT_SETUP,
                             add_heatmap_arguments, add_model_arguments, add_server_arguments,
                             add_speaker_arguments, add_vad_arguments, configs_from_args, open_source, speaker_encoder,
                             stored_attributor)

if TYPE_CHECKING:  # the heavy modules (torch, the store) load only when a session starts, so --help is quick
    import numpy as np

    from calibration.speaker import SpeakerBaseline
    from monitor.audio.sources import AudioSource
    from monitor.history.store import Store
    from monitor.live.events import PointSink
    from monitor.live.pipeline import MonitorPipeline
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.bundle import ModelBundle
    from monitor.model.emotion import EmotionModel

log = logging.getLogger("monitor")


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
  mood-monitor serve --access clinicians.json --certfile c.pem --keyfile k.pem --host 0.0.0.0   # a clinic's
                                                                 # server: many rooms stream to it (docs/clinic.md)
  mood-monitor --remote wss://clinic:8765 --token T --patient P-017   # this room streams to that server
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

    add_model_arguments(p)
    add_vad_arguments(p)
    add_heatmap_arguments(p)
    dash = p.add_argument_group("dashboard (websocket + web page, same port)")
    add_server_arguments(dash)
    dash.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard server")
    dash.add_argument("--linger", type=float, default=0.0, metavar="S",
                      help="keep the dashboard up this long after the session ends (Ctrl-C quits sooner; default: 0)")
    remote = p.add_argument_group("room client: stream this room's audio to a clinic's server instead "
                                  "(mood-monitor serve)")
    remote.add_argument("--remote", metavar="URL",
                        help="the clinic server's address, e.g. wss://clinic.example:8765; the microphone (or "
                             "--input) is streamed to it and the session runs there (--token is the clinician's)")
    remote.add_argument("--room", metavar="NAME", default="", help="this room's name, shown to clinicians")
    remote.add_argument("--cafile", metavar="PEM",
                        help="trust this certificate authority for --remote (a clinic's own certificate)")
    _add_store_arguments(p)
    return p






def _add_store_arguments(p: argparse.ArgumentParser) -> None:
    store = p.add_argument_group("storage (every point is kept per patient; no audio unless asked)")
    store.add_argument("--patient", metavar="ID",
                       help="pseudonymous patient id the session belongs to (no names needed)")
    add_db_argument(store)
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
    add_speaker_arguments(voices)

    out = p.add_argument_group("outputs")
    out.add_argument("--jsonl", metavar="PATH", help="write one JSON object per point to PATH ('-' = stdout)")
    out.add_argument("--summary-json", metavar="PATH", help="write the session summary as JSON to PATH")
    out.add_argument("-v", "--verbose", action="store_true", help="log more detail")




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
        store = None if args.no_store else Store.open(store_target(args.db, args.data_dir), data_dir=args.data_dir)
        baseline = None
        if args.enroll:
            assert store is not None  # --enroll with --no-store is refused while parsing
            segments = [s.audio for s in segment_file(args.enroll, vad)]
            baseline = enroll(model, segments, model_id=bundle.model_id, source=Path(args.enroll).name)
            store.set_baseline(args.patient, baseline.to_json(), bundle.model_id)
            kept = "baseline and voiceprint"
            try:
                _enroll_voice(store, "patient", args.patient, segments, args.enroll, args.speaker_encoder, str(device))
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
            _enroll_voice(store, "clinician", args.clinician, segments, args.enroll_clinician, args.speaker_encoder,
                          str(device))
            print(f"clinician {args.clinician} enrolled; later sessions with --clinician {args.clinician} use "
                  "this voiceprint", file=sys.stderr)
        enrolling = bool(args.enroll or args.enroll_clinician)
        monitoring = bool(args.input) or not enrolling
        speakers = _speaker_attributor(args, store, str(device)) if monitoring else None
        source = open_source(args, vad.frame_ms) if monitoring else None
    except (AudioInputError, BundleError, BackboneLoadError, EnrolmentError, RuntimeError, ValueError,
            OSError) as exc:  # SpeakerEncoderError is a RuntimeError, VoiceprintError a ValueError
        raise _SetupError(str(exc)) from exc
    return _Setup(bundle, model, str(device), store, baseline, source, speakers)



def _enroll_voice(store: Store, role: str, owner: str, segments: Sequence[np.ndarray], source: str,
                  encoder: str, device: str) -> None:
    """Take and keep a voiceprint from enrolment segments (biometric: only in the 0600 store)."""
    from monitor.model.enrolment import enroll_voice

    voiceprint = enroll_voice(speaker_encoder(encoder, device), segments, source=Path(source).name)
    store.set_voiceprint(role, owner, voiceprint)


def _speaker_attributor(args: argparse.Namespace, store: Store | None, device: str) -> SpeakerAttributor | None:
    """The session's attribution when the patient has a voiceprint in the store; None: every voice counts."""
    if store is None or not args.patient:
        if args.clinician:
            log.warning("--clinician %s is not used: without --patient and a store there is no patient voiceprint "
                        "to tell the voices apart; every voice counts", args.clinician)
        return None
    try:
        return stored_attributor(store, args.patient, args.clinician, args.speaker_encoder, device, args.count)
    except LookupError as exc:
        raise _SetupError(f"{exc} ({store.path})") from exc


def _check_compute(requested: str) -> None:
    """--compute cuda without a GPU: say so with this program's flag (--device is the microphone here)."""
    if not str(requested).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise _SetupError(f"--compute {requested} was asked for, but no CUDA GPU is available; use --compute cpu "
                          "(or auto, which picks a GPU when there is one)")


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
    from monitor import serve_command
    from monitor.history import data, report

    return {"report": report.main, "data": data.main, "analyze": analyze.main, "serve": serve_command.main}


SUBCOMMANDS = ("report", "data", "analyze", "serve")


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
    if args.remote:
        from monitor.room_client import run_remote

        return run_remote(parser, args)
    try:
        vad, worker, heatmap = configs_from_args(args)
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
