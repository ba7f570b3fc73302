"""``mood-monitor serve``: one server for a clinic's rooms. Rooms stream audio in; every session is kept per patient.

    mood-monitor serve                                   # this computer only, one printed token, SQLite store
    mood-monitor serve --host 0.0.0.0 --certfile c.pem --keyfile k.pem --access clinicians.json \\
                       --db postgresql://monitor@db.clinic/mood
    mood-monitor serve --hash-token                      # a new clinician token and the hash for the access file

Rooms connect with a browser (the page's "stream this room" mode) or with
``mood-monitor --remote``. The model is loaded once; its backbone is shared by
every session and batches their segments together (``--max-batch``,
``--max-wait-ms``), or runs on a Ray Serve pool with ``--ray``. See
docs/clinic.md for the topology, TLS, backups and sizing.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Sequence

from monitor.options import (EXIT_OK, EXIT_SETUP, add_heatmap_arguments, add_model_arguments, add_server_arguments,
                             add_speaker_arguments, add_vad_arguments, configs_from_args, stored_attributor)
from monitor.history.target import add_db_argument, namespace_target

if TYPE_CHECKING:  # pragma: no cover
    from monitor.audio.pushed import PushedAudioSource
    from monitor.history.store import Store
    from monitor.live.pipeline import MonitorPipeline
    from monitor.live.shared_model import FeatureService
    from monitor.live.speakers import SpeakerAttributor
    from monitor.model.bundle import ModelBundle
    from monitor.model.emotion import EmotionModel
    from monitor.serve.access import Clinician
    from monitor.serve.rooms import RoomHello

log = logging.getLogger("monitor.serve")


def build_parser() -> argparse.ArgumentParser:
    from monitor.live.ray_pool import add_ray_pool_arguments

    p = argparse.ArgumentParser(prog="mood-monitor serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    server = p.add_argument_group("where rooms and dashboards connect (one port: pages, /room, /ws, /api)")
    add_server_arguments(server)
    server.add_argument("--access", metavar="JSON",
                        help="clinicians, their token hashes and the patients each may see (docs/clinic.md); "
                             "default: one token, printed at start, that sees every patient")
    server.add_argument("--hash-token", action="store_true",
                        help="print a new random token and its token_sha256 for the access file, then exit")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=int, default=32, metavar="N",
                        help="concurrent sessions over all rooms (default: 32)")
    limits.add_argument("--resume-grace", type=float, default=120.0, metavar="S",
                        help="how long a session waits for its room to reconnect before it ends (default: 120)")
    limits.add_argument("--max-session-hours", type=float, default=4.0, metavar="H",
                        help="a session is ended after this long (default: 4)")
    add_speaker_arguments(p.add_argument_group("whose voice counts (with the patient's voiceprint, as in the "
                                               "one-room monitor)"))
    add_model_arguments(p)
    add_vad_arguments(p)
    add_heatmap_arguments(p)
    store = p.add_argument_group("storage (every point is kept per patient; no audio)")
    add_db_argument(store)
    add_ray_pool_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    return p


@dataclass
class ClinicModel:
    """The model every session shares: loaded once; its backbone behind one feature service."""

    bundle: ModelBundle
    model: EmotionModel
    service: FeatureService
    device: str

    def close(self) -> None:
        self.service.close()


class RoomSessionFactory:
    """Builds one room's pipeline: the shared model, the patient's enrolment and voiceprints, the store."""

    def __init__(self, shared: ClinicModel, store: Store | None, args: argparse.Namespace) -> None:
        self.shared = shared
        self.store = store
        self.count = args.count
        self.speaker_encoder = args.speaker_encoder
        self.vad, self.worker, self.heatmap = configs_from_args(args)

    def __call__(self, hello: RoomHello, clinician: Clinician, source: PushedAudioSource) -> MonitorPipeline:
        from monitor.history.sink import StoreSink
        from monitor.live.events import SessionInfo
        from monitor.live.pipeline import MonitorConfig, MonitorPipeline, new_session_id
        from monitor.live.projection import Projector
        from monitor.live.shared_model import PooledModel
        from monitor.live.speakers import not_attributing

        bundle, model = self.shared.bundle, self.shared.model
        baseline = None
        if self.store is not None and model.normalizer.mode == "enrolment":
            baseline = self.store.current_baseline(hello.patient, bundle.model_id)
        speakers = self._attributor(hello)
        config = MonitorConfig(vad=self.vad, worker=self.worker, heatmap=self.heatmap)
        settings: dict[str, Any] = config.to_dict()
        settings.update(normalization=model.normalizer.mode, room=hello.room, clinician_account=clinician.id,
                        speakers=speakers.describe() if speakers is not None else not_attributing())
        session = SessionInfo(session_id=new_session_id(), started_at=time.time(), model_id=bundle.model_id,
                              model_version=bundle.version, device=self.shared.device, labels=tuple(bundle.labels),
                              source=source.description, settings=settings, patient_id=hello.patient)
        sinks = [] if self.store is None else [StoreSink(self.store, patient_id=hello.patient)]
        projector = Projector(bundle.reducer, bundle.labels)
        return MonitorPipeline(source, PooledModel(model, self.shared.service), projector, sinks=sinks, config=config,
                               session=session, baseline=baseline, speakers=speakers)

    def _attributor(self, hello: RoomHello) -> SpeakerAttributor | None:
        """Speaker attribution when the patient has a voiceprint (as in the one-room monitor)."""
        if self.store is None:
            return None
        try:
            return stored_attributor(self.store, hello.patient, hello.clinician, self.speaker_encoder,
                                     self.shared.device, self.count)
        except LookupError as exc:  # a room cannot be asked to enrol: tell the log, use the patient's alone
            log.warning("room %s: %s; the patient's voiceprint alone tells the voices apart", hello.room, exc)
            return stored_attributor(self.store, hello.patient, None, self.speaker_encoder, self.shared.device,
                                     self.count)


def load_clinic_model(args: argparse.Namespace) -> ClinicModel:
    """The bundle, once; its backbone in-process (batching across sessions) or on a Ray Serve pool."""
    from monitor.live.ray_pool import RayFeatureService, ray_pool_config
    from monitor.live.shared_model import BatchingConfig, BatchingFeatureService
    from monitor.model.bundle import load_bundle
    from monitor.model.emotion import choose_device

    bundle = load_bundle(args.model)
    device = choose_device(args.compute)
    model = bundle.build_model(device=str(device), precision=args.precision)
    pool = ray_pool_config(args)
    service: FeatureService
    if pool is not None:
        service = RayFeatureService(args.model or "default", pool, model_id=bundle.model_id)
    else:
        service = BatchingFeatureService(model, BatchingConfig(max_batch=args.max_batch,
                                                               max_wait_ms=args.max_wait_ms)).start()
    return ClinicModel(bundle, model, service, str(device))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.hash_token:
        from monitor.serve.access import hash_token

        token = secrets.token_urlsafe(24)
        print(f"token:        {token}\ntoken_sha256: {hash_token(token)}")
        return EXIT_OK
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        server, shared, store = _start(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
        log.info("stopping: every session finishes its queued audio and is stored")
        server.stop()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        shared.close()
        if store is not None:
            store.close()
    return EXIT_OK


def _start(args: argparse.Namespace) -> tuple[Any, ClinicModel, Store | None]:
    from monitor.history.store import Store
    from monitor.serve.access import ClinicAccess
    from monitor.serve.clinic import ClinicConfig, ClinicServer
    from monitor.serve.config import ServerConfig

    access = ClinicAccess.from_file(args.access) if args.access else None
    config = ServerConfig(host=args.host, port=args.port, token=args.token, certfile=args.certfile,
                          keyfile=args.keyfile)
    clinic = ClinicConfig(max_sessions=args.max_sessions, resume_grace_s=args.resume_grace,
                          max_session_hours=args.max_session_hours)
    store = Store.open(namespace_target(args))
    shared = load_clinic_model(args)
    try:
        server = ClinicServer(RoomSessionFactory(shared, store, args), config, clinic, access=access, store=store)
        server.start()
    except BaseException:
        shared.close()
        store.close()
        raise
    print(f"clinic server: {server.url}/", file=sys.stderr, flush=True)
    if server.token:
        print(f"  token (sees every patient): {server.token}\n  a room's page: {server.url}/?token={server.token}"
              "&capture=1&patient=ID", file=sys.stderr, flush=True)
    return server, shared, store
