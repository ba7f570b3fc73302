"""Shared fixtures: where the corpora are, and synthetic audio files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MOOD_MONITOR_DATA", REPO.parent / "shared" / "data"))


def corpus_dir(name: str) -> Path:
    path = DATA_ROOT / name
    if not path.is_dir():
        pytest.skip(f"corpus {name!r} not found at {path} (set MOOD_MONITOR_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    return corpus_dir("ravdess")


@pytest.fixture(scope="session")
def ravdess_clips(ravdess_dir) -> list[Path]:
    """A handful of real clips: one actor, several emotions."""
    clips = sorted((ravdess_dir / "Actor_01").glob("*.wav"))
    assert clips, "RAVDESS folder holds no clips"
    return clips


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from tests.bundles import tiny_wavlm_bundle

    return tiny_wavlm_bundle(tmp_path_factory.mktemp("tiny_bundle"))


# ---- the store on PostgreSQL ------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the whole run (fails, naming the Debian package, when none is installed)."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database for one test (dropped afterwards), as a postgresql:// URL."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return str(request.param)


@pytest.fixture
def target(request, backend, tmp_path, monkeypatch):
    """Where a test's store lives: ``tmp_path/m.sqlite``, or a fresh PostgreSQL database whose kept audio goes
    to ``tmp_path`` (the data folder), so ``tmp_path / record["path"]`` finds it with either backend."""
    if backend == "sqlite":
        return tmp_path / "m.sqlite"
    monkeypatch.setenv("MOOD_MONITOR_DATA_DIR", str(tmp_path))
    return request.getfixturevalue("pg_url")
