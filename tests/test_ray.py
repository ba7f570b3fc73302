"""Ray: the Serve model pool gives the in-process points and survives a killed replica; ``analyze --ray``
writes the single-machine table.

One local Ray (2 CPUs, no dashboard) serves the whole module. The pool checks
run the shipped default model (Whisper base) on real RAVDESS speech; the batch
check uses the eGeMAPS model, whose points do not depend on batching at all,
so the two tables must be equal to the last bit.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from monitor.audio.io import read_audio
from monitor.audio.sources import FileSource
from monitor.live.heatmap import HeatmapConfig
from monitor.live.pipeline import MonitorConfig, MonitorPipeline
from monitor.live.projection import Projector
from monitor.live.ray_pool import (INSTALL_HINT, RayFeatureService, RayPoolConfig, RayUnavailableError,
                                   add_ray_pool_arguments, import_ray, ray_pool_config)
from monitor.live.shared_model import PooledModel
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.bundle import load_model
from tests.test_pipeline import ListSink

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mood-monitor[ray]'")
serve = pytest.importorskip("ray.serve")

CLIPS = ["Actor_03/03-01-05-02-01-01-03.wav", "Actor_03/03-01-04-01-02-01-03.wav",
         "Actor_08/03-01-06-02-02-01-08.wav", "Actor_08/03-01-01-01-01-01-08.wav",
         "Actor_01/03-01-08-02-01-01-01.wav", "Actor_01/03-01-03-01-02-01-01.wav"]


# ---- without a cluster ------------------------------------------------------------------------------
def test_the_pool_flags_make_one_config():
    parser = argparse.ArgumentParser()
    add_ray_pool_arguments(parser)
    assert ray_pool_config(parser.parse_args([])) is None
    local = ray_pool_config(parser.parse_args(["--ray"]))
    assert local is not None and local.address is None and local.replicas == 1 and not local.autoscaling
    config = ray_pool_config(parser.parse_args(["--ray", "auto", "--ray-min-replicas", "1", "--ray-max-replicas",
                                                "4", "--ray-gpus", "1", "--ray-max-batch", "16", "--ray-attach"]))
    assert config == RayPoolConfig(address="auto", min_replicas=1, max_replicas=4, num_gpus=1, max_batch=16,
                                   attach=True)
    assert config.autoscaling
    with pytest.raises(ValueError, match="both"):
        RayPoolConfig(min_replicas=1)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(RayUnavailableError, match=r"pip install 'mood-monitor\[ray\]'"):
        import_ray()
    assert INSTALL_HINT == "pip install 'mood-monitor[ray]'"


def test_analyze_without_ray_stops_before_it_starts_and_says_how_to_install_it(folder, tmp_path, capsys,
                                                                              monkeypatch):
    import sys

    from monitor.analyze import EXIT_SETUP, main

    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "table.csv"
    assert main([str(folder), "--out", str(out), "--model", "egemaps", "--no-progress", "--ray"]) == EXIT_SETUP
    assert INSTALL_HINT in capsys.readouterr().err
    assert not out.exists()


# ---- on a local Ray ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def session_file(ravdess_dir, tmp_path_factory):
    """Six real clips of three actors, 1 s of silence apart, as one recording."""
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    pieces = [part for name in CLIPS for part in (read_audio(ravdess_dir / name), gap)]
    path = tmp_path_factory.mktemp("ray_session") / "session.wav"
    sf.write(str(path), np.concatenate(pieces), SAMPLE_RATE)
    return path


def run_session(path, model, projector, sink=None):
    sink = sink if sink is not None else ListSink()
    config = MonitorConfig(heatmap=HeatmapConfig(smoothing_sigma=0))
    summary = MonitorPipeline(FileSource(path, realtime=False), model, projector, sinks=[sink],
                              config=config).run()
    return summary, sink.points


class TestPool:
    """The shipped default model: in process, and its backbone on a local two-replica Ray Serve pool."""

    @pytest.fixture(scope="class")
    @classmethod
    def default_model(cls):
        bundle, model = load_model("whisper", device="cpu")
        return bundle, model, Projector(bundle.reducer, bundle.labels)

    @pytest.fixture(scope="class")
    @classmethod
    def pool(cls, local_ray, default_model):
        bundle = default_model[0]
        config = RayPoolConfig(replicas=2, num_cpus=1, max_batch=8, batch_wait_ms=5, retries=4,
                               app_name="test-pool")
        service = RayFeatureService("whisper", config, model_id=bundle.model_id)
        yield service
        service.close()
        assert "test-pool" not in serve.status().applications  # close() removed the application

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, default_model, session_file):
        """The session with the normal in-process worker on the whole model."""
        _, model, projector = default_model
        summary, points = run_session(session_file, model, projector)
        assert summary.failed_segments == 0 and summary.points == summary.segments == len(points) >= len(CLIPS)
        return points

    def test_the_pool_gives_the_in_process_points(self, default_model, pool, reference, session_file):
        _, model, projector = default_model
        summary, points = run_session(session_file, PooledModel(model, pool), projector)

        assert summary.failed_segments == 0 and summary.error is None
        assert [(p.t_start, p.t_end) for p in points] == [(p.t_start, p.t_end) for p in reference]
        for ours, theirs in zip(points, reference, strict=True):
            assert ours.valence == pytest.approx(theirs.valence, abs=1e-4)
            assert ours.arousal == pytest.approx(theirs.arousal, abs=1e-4)
            assert ours.confidence == pytest.approx(theirs.confidence, abs=1e-4)
        assert pool.retried == 0 and pool.failed == 0

    def test_serve_with_ray_streams_a_room_through_the_pool(self, default_model, pool, reference, session_file,
                                                            tmp_path):
        """``mood-monitor serve --ray``: a room's audio goes over the room protocol to the session server, whose
        segments go through the Ray Serve pool; the points are the in-process ones."""
        import asyncio

        from monitor.audio.sources import FileSource
        from monitor.history.store import Store
        from monitor.room_client import RoomStreamer, stream_source
        from monitor.serve.clinic import ClinicServer
        from monitor.serve.config import ServerConfig
        from monitor.serve_command import RoomSessionFactory, build_parser, load_clinic_model

        db = tmp_path / "clinic.sqlite"
        args = build_parser().parse_args(["--port", "0", "--db", str(db), "--model", "whisper", "--ray",
                                          "--ray-attach", "--ray-app", "test-pool"])
        shared = load_clinic_model(args)
        assert isinstance(shared.service, RayFeatureService)
        store = Store.open(db)
        server = ClinicServer(RoomSessionFactory(shared, store, args), ServerConfig(port=0, token="t"), store=store)
        server.start()
        try:
            assert server.url is not None
            streamer = RoomStreamer(server.url.replace("http://", "ws://"), "t", "P-RAY")
            stats = asyncio.run(stream_source(streamer, FileSource(session_file, realtime=False)))
        finally:
            server.stop()
            shared.close()  # attached: leaves the pool to its owner
        assert stats.error is None and stats.summary is not None and stats.summary["failed_segments"] == 0
        got = store.point_records(stats.session_id)
        store.close()
        assert [t for p in got for t in (p["t_start"], p["t_end"])] == pytest.approx(
            [t for p in reference for t in (p.t_start, p.t_end)], abs=1e-3)
        for ours, theirs in zip(got, reference, strict=True):
            assert ours["valence"] == pytest.approx(theirs.valence, abs=1e-3)
            assert ours["arousal"] == pytest.approx(theirs.arousal, abs=1e-3)

    def test_a_second_server_attaches_to_the_pool_and_leaves_it_running(self, default_model, pool, ravdess_dir):
        bundle, model, _ = default_model
        wave = read_audio(ravdess_dir / CLIPS[0])
        attached = RayFeatureService("whisper", RayPoolConfig(app_name="test-pool", attach=True),
                                     model_id=bundle.model_id)
        np.testing.assert_allclose(attached.features([wave]), model.backbone_features([wave]).numpy(), atol=1e-4)
        attached.close()
        assert "test-pool" in serve.status().applications and len(pool.features([wave])) == 1

    def test_a_killed_replica_loses_no_point(self, default_model, pool, reference, session_file):
        """Two replicas; once the session has points, the replica that is computing is killed. Its segments are
        sent again to the other one: every segment still becomes its point, none is counted as failed."""
        _, model, projector = default_model
        assert len(replica_pids("test-pool")) == 2
        sink, killed = ListSink(), []

        def kill_the_busy_replica():
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline:
                if not sink.points or pool.in_flight == 0:
                    time.sleep(0.005)
                    continue
                busy = busiest(replica_pids("test-pool"))
                if busy is not None:
                    ray.kill(ray.get_actor(busy, namespace="serve"), no_restart=True)
                    killed.append(busy)

        killer = threading.Thread(target=kill_the_busy_replica, daemon=True)
        killer.start()
        retried_before = pool.retried
        summary, points = run_session(session_file, PooledModel(model, pool), projector, sink)
        killer.join(5)

        assert killed, "no replica was caught computing during the session"
        assert pool.retried > retried_before  # the killed replica had segments in hand; they were sent again
        assert summary.failed_segments == 0 and summary.error is None and pool.failed == 0
        assert summary.points == summary.segments == len(points) == len(reference)  # no point lost
        for ours, theirs in zip(points, reference, strict=True):
            assert (ours.t_start, ours.t_end) == (theirs.t_start, theirs.t_end)
            assert ours.valence == pytest.approx(theirs.valence, abs=1e-4)
            assert ours.arousal == pytest.approx(theirs.arousal, abs=1e-4)
        assert killed[0] not in replica_pids("test-pool")  # Serve replaces a dead replica with a new one


def replica_pids(app: str) -> dict[str, int]:
    """The live replicas of an application: actor name -> process id (from Ray's actor table: the public state
    API needs the dashboard, which these tests do not start)."""
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#"
    return {info["Name"]: info["Pid"] for info in actors().values()
            if info["State"] == "ALIVE" and info["Name"].startswith(prefix)}


def busiest(pids: dict[str, int], window_s: float = 0.05) -> str | None:
    """The replica whose process is using the CPU (computing a batch) right now, if one is."""
    def cpu(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # user + system time

    before = {name: cpu(pid) for name, pid in pids.items()}
    time.sleep(window_s)
    used = {name: cpu(pid) - before[name] for name, pid in pids.items()}
    name = max(used, key=lambda n: used[n]) if used else None
    return name if name is not None and used[name] >= window_s / 2 else None


# ---- analyze --ray ----------------------------------------------------------------------------------
@pytest.fixture()
def folder(ravdess_dir, tmp_path):
    """Four real clips, one in a sub-folder, and a file that is not audio."""
    root = tmp_path / "in"
    (root / "day2").mkdir(parents=True)
    for name in CLIPS[:3]:
        shutil.copy(ravdess_dir / name, root / name.split("/")[1])
    shutil.copy(ravdess_dir / CLIPS[3], root / "day2" / CLIPS[3].split("/")[1])
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt nothing useful")
    return root


def test_analyze_on_ray_writes_the_single_machine_table(local_ray, folder, tmp_path, capsys):
    from monitor.analyze import EXIT_OK, main, read_flat

    here, there = tmp_path / "here.csv", tmp_path / "there.csv"
    common = ["--model", "egemaps", "--compute", "cpu", "--no-progress"]
    assert main([str(folder), "--out", str(here), *common]) == EXIT_OK
    # resuming works the same on Ray: a table with two files done is continued, not redone
    assert main([str(folder / "day2"), str(folder / "broken.wav"), "--out", str(there), *common]) == EXIT_OK
    capsys.readouterr()
    assert main([str(folder), "--out", str(there), "--jobs", "2", *common, "--ray"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "2 of 5 files are already in it" in err and "analyzed 3 files" in err

    ours, theirs = without_descriptor(read_flat(there)), without_descriptor(read_flat(here))
    assert len(theirs) >= 5 and theirs["error"].notna().sum() == 1 and theirs["valence"].notna().sum() >= 4
    # the resumed table lists the first run's files first; row for row, per file, it is the same table
    key = ["file", "start"]
    pd.testing.assert_frame_equal(ours.sort_values(key, ignore_index=True), theirs.sort_values(key, ignore_index=True),
                                  check_exact=True)

    # and from scratch, the same rows in the same order
    fresh = tmp_path / "fresh.csv"
    assert main([str(folder), "--out", str(fresh), "--jobs", "2", *common, "--ray"]) == EXIT_OK
    pd.testing.assert_frame_equal(without_descriptor(read_flat(fresh)), theirs, check_exact=True)


def without_descriptor(flat: pd.DataFrame) -> pd.DataFrame:
    """The one run-specific part of a table: the unreadable file's error names the descriptor soundfile was given
    ("Error opening 47: ..."), whichever number the process had free."""
    flat = flat.copy()
    flat["error"] = flat["error"].str.replace(r"Error opening \d+:", "Error opening N:", regex=True)
    return flat
