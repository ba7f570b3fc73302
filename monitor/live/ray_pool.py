"""A Ray Serve pool for the backbone: many sessions, many machines, one ``FeatureService``.

``BatchingFeatureService`` (``monitor.live.shared_model``) shares one model
inside one process. ``RayFeatureService`` does the same across a Ray cluster:
the backbone (the heavy Whisper/WavLM encoder) runs in Ray Serve replicas,
typically one per GPU, and ``@serve.batch`` joins single segments from every
session into one forward pass::

    room sessions (session server)              Ray cluster
    EmbeddingWorker ─ PooledModel ─┐         ┌─▶ replica (GPU 0): backbone, batched
    EmbeddingWorker ─ PooledModel ─┼─ handle ┼─▶ replica (GPU 1): backbone, batched
    EmbeddingWorker ─ PooledModel ─┘         └─▶ ...

Each waveform is its own request, so a batch can mix sessions. The features
come back to the session's own process, where ``PooledModel`` applies the
normaliser and the head: the session still loads the bundle (without running
its backbone), because the patient's enrolment baseline normalises the
features *after* the pooled backbone pass and differs per session; the head
is tiny.

A replica that dies or restarts costs only the requests it had in hand: they
are sent again (``retries`` times, with a growing pause) to a live replica.
When the retries run out, ``features()`` raises and the session's worker
counts that segment as failed (its summary shows it); nothing is dropped
silently.

Ray is an optional extra (``pip install 'mood-monitor[ray]'``); it is imported
only when a pool is built. The flags are defined once, here
(``add_ray_pool_arguments``), for every program that offers the pool::

    add_ray_pool_arguments(parser)                      # --ray [ADDRESS], --ray-replicas, --ray-gpus, ...
    args = parser.parse_args()
    config = ray_pool_config(args)                      # None without --ray
    bundle, model = load_model(args.model, device="cpu")  # the sessions' head and normaliser
    service = RayFeatureService(args.model, config, model_id=bundle.model_id)
    session_model = PooledModel(model, service)         # per session, for its MonitorPipeline
    ...
    service.close()
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from monitor.live.shared_model import RECENT_BATCHES, ServiceClosed

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mood-monitor[ray]'"
#: ``--ray`` given without an address: start Ray on this machine.
LOCAL = "local"
DEPLOYMENT_NAME = "backbone"


class RayUnavailableError(RuntimeError):
    """Ray (with Serve and Data) is not installed."""


class PoolError(RuntimeError):
    """The pool could not compute a segment's features, even after its retries."""


def import_ray() -> ModuleType:
    """Ray, imported on first use, with a clear message when the optional extra is missing."""
    try:
        import ray
        import ray.serve  # noqa: F401 - the pool needs Serve, the batch command Data: both come with the extra
    except ImportError as exc:
        raise RayUnavailableError(f"Ray is not installed; it is an optional extra: {INSTALL_HINT}") from exc
    return ray


def ray_address(value: str | None) -> str | None:
    """``--ray``'s value -> ``ray.init``'s address: None starts a local Ray, "auto" joins this machine's cluster."""
    return None if value in (None, "", LOCAL) else value


def init_ray(address: str | None, **kwargs: Any) -> bool:
    """Connect to (or start) Ray unless this process already is; True when this call started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    ray.init(address=ray_address(address), logging_level=logging.WARNING, **kwargs)
    return True


@dataclass
class RayPoolConfig:
    """The pool's shape.

    address: None (or "local") starts Ray on this machine; "auto" joins the cluster this machine is part of
    (``ray start``); "ray://HOST:10001" connects as a Ray client. replicas: a fixed number of replicas, unless
    min_replicas/max_replicas are given, which autoscale between them. num_gpus/num_cpus: per replica (a GPU
    replica runs the backbone in mixed precision). max_batch/batch_wait_ms: ``@serve.batch``: segments per
    forward pass, and how long a first request waits for others to join it. retries: how often a segment whose
    replica failed is sent again (back-off starting at retry_backoff_s, doubling) before its session counts it
    as failed. timeout_s: how long one request may take. app_name: the Serve application (one per model).
    attach: use the application another process deployed under app_name (several session servers sharing
    one pool) instead of deploying it; closing then leaves it running.
    """

    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    retries: int = 3
    retry_backoff_s: float = 0.25
    timeout_s: float = 120.0
    app_name: str = "mood-monitor"
    precision: str = "auto"
    attach: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch < 1 or self.retries < 0 or self.batch_wait_ms < 0:
            raise ValueError("replicas and max_batch must be >= 1, retries and batch_wait_ms >= 0")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.timeout_s <= 0:
            raise ValueError("num_cpus and num_gpus must be >= 0, timeout_s > 0")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give both min_replicas and max_replicas (autoscaling), or neither (fixed replicas)")
        if self.min_replicas is not None and self.max_replicas is not None and not (
                0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise ValueError("autoscaling needs 0 <= min_replicas <= max_replicas, max_replicas >= 1")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


# ---- the flags: one definition for every program that offers the pool ---------------------------------
def add_ray_address_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """``--ray [ADDRESS]``: without a value, Ray on this machine; "auto"; or "ray://HOST:10001"."""
    parser.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS", help=help)


def add_ray_pool_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add ``--ray`` and the pool's options (``--ray-replicas`` ...) to a program's parser, as one group."""
    d = RayPoolConfig()
    group = parser.add_argument_group("Ray Serve model pool (pip install 'mood-monitor[ray]')")
    add_ray_address_argument(group, help=(
        "run the model's backbone on a Ray Serve pool shared by every session: 'auto' joins the Ray cluster this "
        "machine belongs to (ray start), ray://HOST:10001 connects as a client, no value starts Ray on this "
        "machine. Give it after the other arguments or with a value."))
    group.add_argument("--ray-replicas", type=int, default=d.replicas, metavar="N",
                       help=f"replicas of the backbone (default: {d.replicas})")
    group.add_argument("--ray-min-replicas", type=int, default=None, metavar="N",
                       help="autoscale between this and --ray-max-replicas instead of a fixed number")
    group.add_argument("--ray-max-replicas", type=int, default=None, metavar="N", help="see --ray-min-replicas")
    group.add_argument("--ray-gpus", type=float, default=d.num_gpus, metavar="G",
                       help="GPUs per replica, e.g. 1 or 0.5 (default: 0, CPU replicas)")
    group.add_argument("--ray-cpus", type=float, default=d.num_cpus, metavar="C",
                       help=f"CPUs per replica (default: {d.num_cpus:g})")
    group.add_argument("--ray-max-batch", type=int, default=d.max_batch, metavar="N",
                       help=f"segments per forward pass, across sessions (default: {d.max_batch})")
    group.add_argument("--ray-batch-wait-ms", type=float, default=d.batch_wait_ms, metavar="MS",
                       help=f"how long a segment waits for others to join its batch (default: {d.batch_wait_ms:g})")
    group.add_argument("--ray-retries", type=int, default=d.retries, metavar="N",
                       help=f"resends of a segment whose replica failed (default: {d.retries})")
    group.add_argument("--ray-app", default=d.app_name, metavar="NAME",
                       help=f"the Ray Serve application's name (default: {d.app_name})")
    group.add_argument("--ray-attach", action="store_true",
                       help="use the pool another server already deployed as --ray-app (same model), without "
                            "deploying or removing it: several session servers, one pool")
    return group


def ray_pool_config(args: argparse.Namespace) -> RayPoolConfig | None:
    """The parsed flags -> a ``RayPoolConfig``, or None when ``--ray`` was not given."""
    if args.ray is None:
        return None
    return RayPoolConfig(address=ray_address(args.ray), replicas=args.ray_replicas,
                         min_replicas=args.ray_min_replicas, max_replicas=args.ray_max_replicas,
                         num_gpus=args.ray_gpus, num_cpus=args.ray_cpus, max_batch=args.ray_max_batch,
                         batch_wait_ms=args.ray_batch_wait_ms, retries=args.ray_retries, app_name=args.ray_app,
                         attach=args.ray_attach)


# ---- the replica ---------------------------------------------------------------------------------------
class BackboneReplica:
    """One replica: the bundle's model, of which only the backbone runs here.

    The bundle is loaded by name or path on the replica's machine (so every
    node needs the project and the bundle; a Hub repo id is fetched there).
    """

    def __init__(self, bundle: str, precision: str, threads: int) -> None:
        import torch

        from monitor.model.bundle import load_bundle

        if threads > 0:
            torch.set_num_threads(threads)  # a CPU replica uses its share, not every core of the node
        loaded = load_bundle(bundle)
        self.model_id = loaded.model_id
        self.model = loaded.build_model(device="auto", precision=precision)
        self.segments = 0
        self.batches: deque[int] = deque(maxlen=RECENT_BATCHES)  # of the recent passes

    def forward(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Backbone features of a batch, one float32 row per waveform."""
        feats = self.model.backbone_features(list(waves)).detach().cpu().numpy().astype(np.float32, copy=False)
        self.segments += len(waves)
        self.batches.append(len(waves))
        return list(feats)


def _deployment(bundle: str, config: RayPoolConfig) -> Any:
    """The Serve application: ``BackboneReplica`` behind ``@serve.batch``, with the pool's resources."""
    import_ray()
    from ray import serve

    class Backbone:
        def __init__(self, bundle: str, precision: str, threads: int) -> None:
            self.replica = BackboneReplica(bundle, precision, threads)

        @serve.batch(max_batch_size=config.max_batch, batch_wait_timeout_s=config.batch_wait_ms / 1000.0)
        async def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
            # in a thread, so that the replica's event loop keeps collecting the next batch meanwhile
            result: list[np.ndarray] = await asyncio.to_thread(self.replica.forward, waves)
            return result

        def model_id(self) -> str:
            return self.replica.model_id

        def batch_sizes(self) -> list[int]:
            return list(self.replica.batches)

    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        # enough requests in a replica's hands to fill a batch while the previous one runs
        "max_ongoing_requests": 2 * config.max_batch,
        "health_check_period_s": 2.0,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if config.autoscaling:
        options["autoscaling_config"] = {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                         "target_ongoing_requests": config.max_batch}
    else:
        options["num_replicas"] = config.replicas
    threads = 0 if config.num_gpus else max(1, int(round(config.num_cpus)))
    return serve.deployment(**options)(Backbone).bind(bundle, config.precision, threads)


def _bundle_reference(bundle: str | os.PathLike[str]) -> str:
    """A name stays a name (shipped bundles, Hub ids); a folder that exists here is sent as an absolute path."""
    text = os.fspath(bundle)
    path = Path(text)
    return str(path.resolve()) if path.exists() else text


def _retryable(ray: ModuleType) -> tuple[type[BaseException], ...]:
    """Failures of the pool, not of the segment: a replica died, restarted, timed out or was unreachable."""
    from ray import serve

    names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
             "OwnerDiedError", "LocalRayletDiedError", "GetTimeoutError", "RaySystemError")
    found = [getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n)]
    found += [getattr(serve.exceptions, n) for n in ("BackPressureError", "DeploymentUnavailableError",
                                                     "ReplicaUnavailableError") if hasattr(serve.exceptions, n)]
    return (TimeoutError, *found)


class RayFeatureService:
    """``FeatureService`` on a Ray Serve pool; ``features()`` is safe from many sessions' threads at once.

    ``bundle``: the model bundle's name or folder, loaded by every replica. The sessions load the same bundle
    too and wrap it as ``PooledModel(model, service)``: only the backbone is pooled, because each session's
    enrolment baseline normalises the features after the backbone pass, before that session's head; the head
    is small and runs where the session runs. ``model_id``: when given, the pool must
    serve exactly this model (the replicas' bundle is checked against it), so that features from one model
    never reach another's head. Deploying waits until the replicas are up; ``close()`` removes the application
    again (and stops Ray when this object started it). With ``config.attach`` the application that another
    process deployed is used as it is, and left running.
    """

    def __init__(self, bundle: str | os.PathLike[str] = "default", config: RayPoolConfig | None = None,
                 model_id: str | None = None) -> None:
        self.config = config or RayPoolConfig()
        self.bundle = _bundle_reference(bundle)
        self._ray = import_ray()
        from ray import serve

        self._started_ray = init_ray(self.config.address)
        self._retry_on = _retryable(self._ray)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: Requests sent again after their replica failed, and segments given up on.
        self.retried = 0
        self.failed = 0
        self.in_flight = 0
        try:
            if self.config.attach:
                self._handle = serve.get_app_handle(self.config.app_name)
            else:
                serve.start(proxy_location="Disabled")  # no HTTP: sessions call the handle directly
                self._handle = serve.run(_deployment(self.bundle, self.config), name=self.config.app_name,
                                         route_prefix=None)
            self.model_id: str = self._handle.model_id.remote().result(timeout_s=self.config.timeout_s)
        except BaseException:
            self._shutdown()
            raise
        if model_id is not None and model_id != self.model_id:
            self.close()
            raise PoolError(f"the Ray pool serves model {self.model_id}, not the sessions' {model_id}")

    def features(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """One request per waveform (so ``@serve.batch`` can join them with other sessions'), gathered in order."""
        if self._closed.is_set():
            raise ServiceClosed("the Ray model pool has been closed")
        if not len(waves):
            raise ValueError("no waveforms")
        arrays = [np.ascontiguousarray(w, dtype=np.float32) for w in waves]
        with self._lock:
            self.in_flight += len(arrays)
        try:
            return np.stack(self._gather(arrays)).astype(np.float32, copy=False)
        finally:
            with self._lock:
                self.in_flight -= len(arrays)

    def _gather(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Every request's features. Those that failed because the pool did (a replica died, restarted, timed
        out) are sent again together after a pause that doubles; a segment's own error is raised at once."""
        responses = [self._handle.remote(w) for w in arrays]
        rows: list[np.ndarray | None] = [None] * len(arrays)
        waiting = list(range(len(arrays)))
        attempt = 0
        while True:
            failed: list[int] = []
            last: BaseException | None = None
            for i in waiting:
                try:
                    rows[i] = np.asarray(responses[i].result(timeout_s=self.config.timeout_s), dtype=np.float32)
                except self._retry_on as exc:
                    failed.append(i)
                    last = exc
            if not failed:
                return [row for row in rows if row is not None]
            if attempt >= self.config.retries or self._closed.is_set():
                with self._lock:
                    self.failed += len(failed)
                raise PoolError(f"the Ray pool failed {len(failed)} segment(s) {attempt + 1} times "
                                f"({type(last).__name__}: {last})") from last
            pause = self.config.retry_backoff_s * 2 ** attempt
            log.warning("the Ray pool failed %d segment(s) (%s); sending them again in %.2f s", len(failed),
                        type(last).__name__, pause)
            with self._lock:
                self.retried += len(failed)
            time.sleep(pause)
            attempt += 1
            for i in failed:
                responses[i] = self._handle.remote(arrays[i])
            waiting = failed

    def close(self) -> None:
        """Remove the Serve application; stop Ray too when this object started it (not a cluster it joined)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._shutdown()

    def _shutdown(self) -> None:
        from ray import serve

        try:
            if not self.config.attach:  # an attached pool belongs to the process that deployed it
                serve.delete(self.config.app_name)
        except Exception as exc:  # noqa: BLE001 - closing must not fail because the cluster is already gone
            log.warning("could not remove the Ray Serve application %s: %s", self.config.app_name, exc)
        if self._started_ray:
            try:
                serve.shutdown()  # type: ignore[no-untyped-call]
            finally:
                self._ray.shutdown()

    def __enter__(self) -> RayFeatureService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
