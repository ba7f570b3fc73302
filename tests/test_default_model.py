"""The shipped default model on speakers it never trained on: no lean for a new, un-enrolled speaker.

RAVDESS actors 19 and 20 and EMOVO m3 are held out of the default bundle's head
and reducer fits (they only stop its training early). Their neutral and calm
clips, scored as the live monitor scores them (VAD segments, no enrolment),
should land near the centre of the circumplex: the issue's target is within
0.25 of it, per held-out speaker.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import corpus_dir

NEUTRAL_RADIUS = 0.25
HELD_OUT_NEUTRAL = {  # neutral speech only: calm has its own anchor, at low arousal
    "ravdess:20": ("ravdess", "Actor_20/03-01-01-*.wav"),
    "ravdess:19": ("ravdess", "Actor_19/03-01-01-*.wav"),
    "emovo:m3": ("emovo", "m3/neu-m3-*.flac"),
}


@pytest.fixture(scope="module")
def default_model():
    from monitor import MoodModel

    return MoodModel.from_pretrained("default", device="cpu", progress=False)


def neutral_centroid(model, speaker: str) -> np.ndarray:
    corpus, pattern = HELD_OUT_NEUTRAL[speaker]
    files = sorted(corpus_dir(corpus).glob(pattern))
    assert len(files) >= 2, (speaker, pattern)
    table = model.process_files(files)
    seconds = (table.index.get_level_values("end") - table.index.get_level_values("start")).total_seconds()
    weights = np.asarray(seconds, dtype=float)
    return np.average(table[["valence", "arousal"]].to_numpy(), axis=0, weights=weights)


#: Missed today (docs/model_card.md, "Targets"): RAVDESS's acted neutral is flat and quiet, and un-enrolled it lands
#: between calm and sad, at (-0.40, -0.68) for actor 19 and (+0.17, -0.53) for actor 20. Strict, so a model that
#: meets the target turns these into failures to be removed.
MISSED = pytest.mark.xfail(strict=True, reason="un-enrolled RAVDESS neutral speech lands at low arousal")


@pytest.mark.slow
@pytest.mark.parametrize("speaker", [pytest.param(s, marks=MISSED) if s.startswith("ravdess") else s
                                     for s in sorted(HELD_OUT_NEUTRAL)])
def test_an_unenrolled_held_out_speakers_neutral_speech_lands_near_the_centre(default_model, speaker):
    centroid = neutral_centroid(default_model, speaker)
    assert np.hypot(*centroid) <= NEUTRAL_RADIUS, f"{speaker}: neutral centroid (v, a) = {centroid.round(3)}"


def test_the_default_is_the_whisper_model_on_the_packaged_weights():
    from monitor.model.bundle import load_bundle
    from monitor.model.whisper import PACKAGED

    bundle = load_bundle("default")
    assert bundle.backbone["kind"] == "whisper" and bundle.backbone["source"] == "package:whisper-base"
    assert bundle.backbone["weights_sha256"] == PACKAGED["whisper-base"].sha256
    assert load_bundle("egemaps").backbone["kind"] == "egemaps"  # the light fallback stays, by name


@pytest.mark.slow
def test_the_api_and_the_live_monitor_give_the_default_models_points(default_model, ravdess_clips, tmp_path):
    """Replayed through run_monitor.py (the live worker batches segments) and scored by the API, one clip at a time."""
    import json
    import subprocess
    import sys

    import soundfile as sf

    from monitor.audio.io import read_audio
    from tests.conftest import REPO

    gap = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([x for clip in ravdess_clips[:4] for x in (read_audio(clip), gap)])
    session = tmp_path / "session.wav"
    sf.write(str(session), audio, 16000, subtype="PCM_16")
    proc = subprocess.run([sys.executable, "run_monitor.py", "--input", str(session), "--fast", "--jsonl", "-",
                           "--no-store", "--no-dashboard"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    points = [r for r in map(json.loads, proc.stdout.splitlines()) if r["type"] == "point"]
    table = default_model.process_file(session)
    assert len(points) == len(table) >= 4
    for point, (_, start, _), row in zip(points, table.index, table.itertuples(index=False), strict=True):
        assert start.total_seconds() == pytest.approx(point["t_start"], abs=1e-9)
        assert (row.valence, row.arousal) == pytest.approx((point["valence"], point["arousal"]), abs=1e-3)
        assert row.confidence == pytest.approx(point["confidence"], abs=1e-3)
