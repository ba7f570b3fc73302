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
