"""Enrolment from the command line: stored with the patient, reused by later sessions, refused when useless."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.io import read_audio
from monitor.cli import EXIT_OK, EXIT_SETUP, main
from monitor.history.store import Store


@pytest.fixture(scope="module")
def actor_audio(ravdess_dir, tmp_path_factory):
    """Actor 05's neutral and calm clips as an intake recording, and one angry clip as a session."""
    folder = tmp_path_factory.mktemp("enrol")
    actor = ravdess_dir / "Actor_05"
    calm = sorted(actor.glob("03-01-01-*.wav")) + sorted(actor.glob("03-01-02-*.wav"))
    sf.write(str(folder / "intake.wav"), np.concatenate([read_audio(p) for p in calm]), 16000)
    sf.write(str(folder / "short.wav"), read_audio(calm[0]), 16000)
    angry = sorted(actor.glob("03-01-05-02-*.wav"))[0]
    return folder / "intake.wav", folder / "short.wav", angry


def session_points(jsonl):
    return [json.loads(line) for line in jsonl.read_text().splitlines() if '"point"' in line]


def test_enrolment_is_stored_and_used_by_later_sessions(actor_audio, tmp_path, capsys):
    intake, _, angry = actor_audio
    db = tmp_path / "store.sqlite"
    assert main(["--patient", "P-05", "--enroll", str(intake), "--db", str(db), "--no-dashboard"]) == EXIT_OK
    assert "enrolled" in capsys.readouterr().err
    store = Store.open(db)
    baseline = store.get_baseline("P-05")
    assert baseline is not None and baseline["seconds"] >= 10 and baseline["source"] == "intake.wav"
    from monitor.model.bundle import load_bundle

    assert baseline["model_id"] == load_bundle("default").model_id  # tied to the model it was made with

    enrolled, anonymous = tmp_path / "enrolled.jsonl", tmp_path / "anonymous.jsonl"
    for extra, out in ((["--patient", "P-05"], enrolled), ([], anonymous)):
        args = ["--input", str(angry), "--fast", "--db", str(db), "--no-dashboard", "--jsonl", str(out), *extra]
        assert main(args) == EXIT_OK
    with_baseline, without = session_points(enrolled), session_points(anonymous)
    assert len(with_baseline) == len(without) >= 1
    # the same audio lands elsewhere once the speaker's baseline is applied
    moved = [abs(a["valence"] - b["valence"]) + abs(a["arousal"] - b["arousal"])
             for a, b in zip(with_baseline, without, strict=True)]
    assert max(moved) > 1e-3
    sessions = {s.patient_id: s for s in Store.open(db).sessions()}
    assert sessions["P-05"].settings["speaker_baseline"]["source"] == "intake.wav"
    assert sessions["P-05"].settings["normalization"] == "enrolment"

    # a second enrolment replaces the first, which stays in the history
    assert main(["--patient", "P-05", "--enroll", str(intake), "--db", str(db), "--no-dashboard"]) == EXIT_OK
    history = Store.open(db).baseline_history("P-05")
    assert len(history) == 2 and history[0]["replaced_at"] is not None and history[1]["replaced_at"] is None


def test_too_little_speech_is_refused(actor_audio, tmp_path, capsys):
    _, short, _ = actor_audio
    db = tmp_path / "store.sqlite"
    assert main(["--patient", "P-1", "--enroll", str(short), "--db", str(db), "--no-dashboard"]) == EXIT_SETUP
    assert "at least 10 s" in capsys.readouterr().err
    assert Store.open(db).get_baseline("P-1") is None


def test_enrolment_needs_a_patient_and_a_store(actor_audio, capsys):
    intake, _, _ = actor_audio
    with pytest.raises(SystemExit):
        main(["--enroll", str(intake)])
    assert "--patient" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--enroll", str(intake), "--patient", "P", "--no-store"])
    assert "--no-store" in capsys.readouterr().err


def test_a_model_without_enrolment_normalisation_refuses(actor_audio, tiny_bundle, tmp_path, capsys):
    intake, _, _ = actor_audio
    code = main(["--patient", "P", "--enroll", str(intake), "--model", str(tiny_bundle),
                 "--db", str(tmp_path / "s.sqlite"), "--no-dashboard"])
    assert code == EXIT_SETUP
    assert "does not use enrolment" in capsys.readouterr().err
