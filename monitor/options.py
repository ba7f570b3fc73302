"""The command-line options and exit codes that the monitor, the clinic's server and the room client share.

One definition of each flag: ``mood-monitor`` (one room), ``mood-monitor serve`` (many rooms) and
``mood-monitor --remote`` (a room streaming to a server) build their parsers from these groups.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from monitor.audio.segmenter import VadConfig
from monitor.live.heatmap import HeatmapConfig
from monitor.live.worker import WorkerConfig

if TYPE_CHECKING:  # pragma: no cover
    from monitor.audio.sources import AudioSource
    from monitor.history.store import Store
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.voiceprint import SpeakerEncoder

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ENDED_EARLY, EXIT_SETUP, EXIT_NOT_STORED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags (the live monitor and the clinic's server share them)."""
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


def add_vad_arguments(p: argparse.ArgumentParser) -> None:
    """Speech segmentation flags."""
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


def add_heatmap_arguments(p: argparse.ArgumentParser) -> None:
    """Heat map flags."""
    hm = p.add_argument_group("heat map")
    hm.add_argument("--heatmap-bins", type=int, default=48, metavar="N", help="cells per axis (default: 48)")
    hm.add_argument("--heatmap-mode", choices=["decay", "window"], default="decay",
                    help="decay: old speech fades with a half-life; window: only the last --window seconds count")
    hm.add_argument("--half-life", type=float, default=120.0, metavar="S", help="decay half-life (default: 120 s)")
    hm.add_argument("--window", type=float, default=300.0, metavar="S", help="window length (default: 300 s)")
    hm.add_argument("--smoothing", type=float, default=1.0, metavar="CELLS",
                    help="Gaussian blur of the map (default: 1 cell; 0 = none)")


def add_server_arguments(dash: argparse._ArgumentGroup) -> None:
    """Where and how pages and websockets are served (address, token, TLS)."""
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default: 127.0.0.1, this computer only; 0.0.0.0 exposes clinical data "
                           "to the network)")
    dash.add_argument("--port", type=int, default=8765,
                      help="port for the page and the websocket (default: 8765; 0 = any free port)")
    dash.add_argument("--token",
                      help="access token the page and websocket require (default: a new random one, printed at start)")
    dash.add_argument("--certfile", help="TLS certificate (PEM) to serve https/wss")
    dash.add_argument("--keyfile", help="TLS private key (PEM) for --certfile")


def configs_from_args(args: argparse.Namespace) -> tuple[VadConfig, WorkerConfig, HeatmapConfig]:
    vad = VadConfig(aggressiveness=args.vad_aggressiveness, frame_ms=args.frame_ms,
                    start_padding_ms=args.start_padding_ms, end_padding_ms=args.end_padding_ms,
                    min_segment_s=args.min_segment, max_segment_s=args.max_segment,
                    speech_gate=args.speech_gate == "on")
    worker = WorkerConfig(device=args.compute, precision=args.precision, max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms)
    heatmap = HeatmapConfig(bins=args.heatmap_bins, mode=args.heatmap_mode, half_life_s=args.half_life,
                            window_s=args.window, smoothing_sigma=args.smoothing)
    return vad, worker, heatmap


def open_source(args: argparse.Namespace, frame_ms: int) -> AudioSource:
    from monitor.audio.sources import FileSource, MicrophoneSource

    if args.input:
        return FileSource(args.input, frame_ms=frame_ms, realtime=not args.fast)
    device = args.device
    if device is not None and str(device).isdigit():
        device = int(device)
    return MicrophoneSource(device=device, frame_ms=frame_ms)


_ENCODERS: dict[tuple[str, str], SpeakerEncoder] = {}


def add_speaker_arguments(voices: argparse._ArgumentGroup) -> None:
    """Whose voice counts, and the encoder that tells voices apart (the monitor and the clinic's server)."""
    from monitor.model.speaker_encoders import DEFAULT_SPEAKER_ENCODER, SPEAKER_ENCODER_HELP

    voices.add_argument("--count", choices=["auto", "patient", "all"], default="auto",
                        help="whose points go into the heat map, summaries and store when the patient has a "
                             "voiceprint. patient: only segments in the patient's voice (the others are still shown, "
                             "labelled, and never stored as the patient's); all: every voice, each point labelled; "
                             "auto (default): patient when the clinician is enrolled too and the speaker encoder tells "
                             "two known voices apart well enough (ecapa: docs/store.md), otherwise all")
    voices.add_argument("--speaker-encoder", default=DEFAULT_SPEAKER_ENCODER, metavar="NAME",
                        help=SPEAKER_ENCODER_HELP + f" (default: {DEFAULT_SPEAKER_ENCODER})")


def speaker_encoder(choice: str, device: str) -> SpeakerEncoder:
    """The speaker encoder (loaded once per process, choice and device: enrolment and the session share it)."""
    from monitor.model.speaker_encoders import load_speaker_encoder

    if (choice, device) not in _ENCODERS:
        _ENCODERS[(choice, device)] = load_speaker_encoder(choice, device=device)
    return _ENCODERS[(choice, device)]


def stored_attributor(store: Store, patient: str, clinician: str | None, choice: str, device: str,
                      count: str) -> SpeakerAttributor | None:
    """The session's speaker attribution from the voiceprints in the store; None: every voice counts.

    A clinician named without a voiceprint is an error (their speech would be counted as unknown while the
    user believes it is told apart); a patient without one for this encoder is not: the session runs and says
    that every voice counts, and the log says when a voiceprint from another encoder is what is missing.
    """
    from calibration.attribution import COUNTS_PATIENT_ONLY
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.speaker_encoders import encoder_name

    name = encoder_name(choice)
    patient_print = store.voiceprint("patient", patient, name)
    clinician_print = store.voiceprint("clinician", clinician, name) if clinician else None
    if clinician and clinician_print is None:
        raise LookupError(f"clinician {clinician} has no {name} voiceprint in the store"
                          f"{_other_encoders(store, 'clinician', clinician)}; enrol them with "
                          f"--clinician {clinician} --enroll-clinician FILE")
    if patient_print is None:
        other = _other_encoders(store, "patient", patient)  # a voiceprint from another encoder: worth a warning
        log.log(logging.WARNING if other else logging.INFO, "patient %s has no %s voiceprint%s: every voice "
                "counts (enrol with --enroll)", patient, name, other)
        return None
    if count == "auto":  # with one voice enrolled, most of a patient's emotional speech is left unknown
        count = "patient" if clinician_print is not None and name in COUNTS_PATIENT_ONLY else "all"
    return SpeakerAttributor(speaker_encoder(choice, device), patient_print, clinician_print, count=count)


def _other_encoders(store: Store, role: str, owner: str) -> str:
    others = store.voiceprint_encoders(role, owner)
    return f" (only from {', '.join(others)}: enrol again, or pass --speaker-encoder to match)" if others else ""
