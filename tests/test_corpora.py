"""Corpus adapters, label mapping and speaker-independent splits.

EMOVO, JL-Corpus and RAVDESS run on the real clips in ../shared/data or $MOOD_MONITOR_DATA (skipped
with a reason when absent); IEMOCAP, MEAD, EmoDB and CREMA-D run on synthetic
fixtures written in their real folder layout and naming conventions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calibration.anchors import CANONICAL_EMOTIONS, get_anchor_set
from training.corpora import (
    Manifest,
    corpus_split,
    load_corpora,
    load_cremad,
    load_emodb,
    load_emovo,
    load_iemocap,
    load_jl,
    load_mead,
    load_ravdess,
    read_csv_manifest,
    speaker_folds,
    with_folds,
)
from monitor.audio.io import read_audio
from tests.conftest import DATA_ROOT, corpus_dir

DATA = DATA_ROOT  # ../shared/data, or $MOOD_MONITOR_DATA (tests/conftest.py)


def _need(folder: str) -> Path:
    return corpus_dir(folder)


def _tone(path: Path, seconds: float = 0.3, sr: int = 16000, channels: int = 1, freq: float = 220.0, fmt=None):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, format=fmt)
    return path


# ---------------------------------------------------------------------------------- real corpora


def test_emovo_real_clips():
    m = load_emovo(_need("emovo"))
    assert len(m) == 588 and not m.skipped
    assert set(m.labels) == set(get_anchor_set("emovo").labels)
    assert len(set(m.speakers)) == 6 and all(s.startswith("emovo:") for s in m.speakers)
    # the file name's code becomes the canonical label
    item = next(it for it in m if Path(it.path).name == "gio-f1-b1.flac")
    assert (item.label, item.raw_label, item.speaker, item.gender) == ("happy", "gio", "emovo:f1", "female")
    # default split leaves f3 and m3 out, whole speakers only
    test_speakers = set(m.speakers[m.splits == "test"])
    assert test_speakers == {"emovo:f3", "emovo:m3"}
    assert not test_speakers & set(m.speakers[m.splits == "train"])
    wave = read_audio(item.path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) > 16000


def test_jl_real_clips():
    m = load_jl(_need("jl-corpus"))
    assert len(m) == 480 and not m.skipped
    assert sorted(set(m.labels)) == ["angry", "excited", "happy", "sad"]
    assert sorted(set(m.speakers)) == ["jl:female1", "jl:male2"]
    counts = {c: int((m.labels == c).sum()) for c in set(m.labels)}
    assert set(counts.values()) == {120}


def test_ravdess_real_clips_labels_and_intensity():
    m = load_ravdess(_need("ravdess"))
    assert len(m) == 720 and not m.skipped
    assert set(m.labels) == set(get_anchor_set("ravdess").labels)
    item = next(it for it in m if it.utterance == "03-01-05-02-01-01-12")
    assert (item.label, item.intensity, item.speaker, item.gender, item.sentence) == \
        ("angry", "strong", "ravdess:12", "female", "01")
    folds = speaker_folds(m, 4)
    for f in range(4):
        speakers = set(m.speakers[folds == f])
        assert len(speakers) == 6 and not speakers & set(m.speakers[folds != f])
        genders = [m.column("gender")[m.speakers == s][0] for s in speakers]
        assert genders.count("female") == 3


def test_load_corpora_by_name_under_data_root():
    _need("ravdess"), _need("emovo"), _need("jl-corpus")
    m = load_corpora(["emovo", "jl"], data_root=DATA)
    assert m.summary()["corpora"] == {"emovo": 588, "jl": 480}
    loco = corpus_split(m, "emovo")
    assert set(loco.corpora[loco.splits == "test"]) == {"emovo"}
    assert set(loco.corpora[loco.splits == "train"]) == {"jl"}


# ---------------------------------------------------------------------------------- synthetic layouts


def _iemocap_fixture(root: Path) -> Path:
    base = root / "IEMOCAP_full_release"
    lines = {
        1: [("Ses01F_impro01_F000", "neu", (2.5, 2.5, 2.5)), ("Ses01F_impro01_M000", "exc", (4.0, 4.5, 3.0)),
            ("Ses01F_impro01_F001", "xxx", (3.0, 3.0, 3.0)), ("Ses01F_impro01_M001", "fru", (2.0, 3.5, 3.5))],
        2: [("Ses02M_script01_1_F000", "sad", (1.0, 1.5, 2.0)), ("Ses02M_script01_1_M000", "ang", (1.5, 5.0, 4.5))],
        3: [("Ses03F_impro02_F000", "hap", (5.0, 3.5, 3.0))],
        4: [("Ses04F_impro01_F000", "neu", (3.0, 2.0, 2.5)), ("Ses04F_impro01_M000", "sad", (0.5, 1.0, 1.0))],
        5: [("Ses05M_impro03_M000", "ang", (1.0, 5.5, 5.0)), ("Ses05M_impro03_F000", "hap", (4.5, 3.0, 3.0))],
    }
    for session, rows in lines.items():
        dialogs: dict[str, list] = {}
        for utt, emo, vad in rows:
            dialogs.setdefault(utt.rsplit("_", 1)[0], []).append((utt, emo, vad))
        for dialog, utts in dialogs.items():
            text = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for k, (utt, emo, (v, a, d)) in enumerate(utts):
                text += [f"[{k * 3.0:.4f} - {k * 3.0 + 2.5:.4f}]\t{utt}\t{emo}\t[{v:.4f}, {a:.4f}, {d:.4f}]",
                         f"C-E1:\t{emo.capitalize()};\t()", "A-E1:\tval 3; act 3; dom  3;\t()", ""]
                _tone(base / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav")
            eval_dir = base / f"Session{session}" / "dialog" / "EmoEvaluation"
            eval_dir.mkdir(parents=True, exist_ok=True)
            (eval_dir / f"{dialog}.txt").write_text("\n".join(text))
            (eval_dir / "Categorical").mkdir(exist_ok=True)  # sub-folders of the real release are ignored
    return base


def test_iemocap_synthetic_layout(tmp_path):
    root = _iemocap_fixture(tmp_path)
    m = load_iemocap(root)  # 4 classes, excited merged into happy
    by_utt = {it.utterance: it for it in m}
    assert by_utt["Ses01F_impro01_M000"].label == "happy" and by_utt["Ses01F_impro01_M000"].raw_label == "exc"
    assert "Ses01F_impro01_F001" not in by_utt and "Ses01F_impro01_M001" not in by_utt
    reasons = {Path(p).stem: r for p, r in m.skipped}
    assert reasons["Ses01F_impro01_F001"].startswith("label excluded") and "fru" in reasons["Ses01F_impro01_M001"]
    # sessions 1-3 / 4 / 5 and speakers per session and gender of the utterance
    assert {it.split for it in m if it.utterance.startswith(("Ses01", "Ses02", "Ses03"))} == {"train"}
    assert {it.split for it in m if it.utterance.startswith("Ses04")} == {"val"}
    assert {it.split for it in m if it.utterance.startswith("Ses05")} == {"test"}
    assert by_utt["Ses01F_impro01_M000"].speaker == "iemocap:Ses01M"
    # dimensions scaled to [-1, 1] with training statistics only: train V spans 1.0..5.0
    assert by_utt["Ses02M_script01_1_F000"].valence == pytest.approx(-1.0)
    assert by_utt["Ses03F_impro02_F000"].valence == pytest.approx(1.0)
    assert by_utt["Ses01F_impro01_F000"].valence == pytest.approx(2 * (2.5 - 1.0) / 4.0 - 1)
    assert by_utt["Ses04F_impro01_M000"].valence == -1.0  # 0.5 is below the training minimum: clipped
    train_a = m.split("train").column("arousal")
    assert train_a.min() == pytest.approx(-1.0) and train_a.max() == pytest.approx(1.0)
    assert by_utt["Ses05M_impro03_M000"].arousal == 1.0  # 5.5 above the training maximum: clipped
    # the 5-class option keeps frustrated; the no-merge option drops excited
    m5 = load_iemocap(root, labels="5")
    assert "frustrated" in set(m5.labels)
    m4 = load_iemocap(root, labels="4-noexc")
    assert "Ses01F_impro01_M000" not in {it.utterance for it in m4}


def test_mead_synthetic_layout(tmp_path):
    root = tmp_path / "MEAD"
    for spk in ("M003", "W009"):
        for emo in ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised"):
            _tone(root / spk / "audio" / emo / "level_1" / "001.wav")
    _tone(root / "M003" / "audio" / "happy" / "level_3" / "002.flac", fmt="FLAC")
    (root / "M003" / "audio" / "happy" / "level_3" / "003.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A not audio")
    m = load_mead(root, n_test_speakers=1, n_val_speakers=0)
    assert sorted(set(m.labels)) == sorted(["angry", "contempt", "disgust", "fearful", "happy", "neutral", "sad",
                                            "surprised"])
    assert set(m.speakers) == {"mead:M003", "mead:W009"}
    level3 = [it for it in m if it.intensity == "level_3"]
    assert len(level3) == 1 and level3[0].label == "happy"
    assert any(p.endswith("003.m4a") and r.startswith("unreadable") for p, r in m.skipped)
    assert len(set(m.speakers[m.splits == "test"])) == 1
    assert not set(m.speakers[m.splits == "test"]) & set(m.speakers[m.splits == "train"])


def test_emodb_and_cremad_synthetic_names(tmp_path):
    emodb = tmp_path / "emodb" / "wav"
    for name in ("03a01Fa", "08b02Tb", "16a05Wc", "10b09La", "12a04Ed", "14a07Aa", "15b10Nc"):
        _tone(emodb / f"{name}.wav")
    _tone(emodb / "readme_notes.wav")
    m = load_emodb(emodb.parent)
    labels = {it.utterance: it.label for it in m}
    assert labels == {"03a01Fa": "happy", "08b02Tb": "sad", "16a05Wc": "angry", "10b09La": "bored",
                      "12a04Ed": "disgust", "14a07Aa": "fearful", "15b10Nc": "neutral"}
    assert any("readme_notes" in p for p, _ in m.skipped)
    assert {it.split for it in m if it.speaker in ("emodb:15", "emodb:16")} == {"test"}

    crema = tmp_path / "crema" / "AudioWAV"
    codes = [("ANG", "HI"), ("DIS", "XX"), ("FEA", "LO"), ("HAP", "MD"), ("NEU", "XX"), ("SAD", "HI")]
    for i, (emo, lvl) in enumerate(codes):
        _tone(crema / f"10{i + 1:02d}_DFA_{emo}_{lvl}.wav", sr=22050)  # another rate: read and resampled
    _tone(crema / "1001_IEO_XYZ_HI.wav")
    m = load_cremad(crema.parent, n_test_speakers=2, n_val_speakers=1)
    assert sorted(m.labels) == sorted(["angry", "disgust", "fearful", "happy", "neutral", "sad"])
    assert any("XYZ" in r for _, r in m.skipped)
    assert (m.splits == "test").sum() == 2 and (m.splits == "val").sum() == 1
    assert len(read_audio(m[0].path)) == pytest.approx(0.3 * 16000, abs=2)


def test_broken_and_odd_files_are_reported_not_silently_dropped(tmp_path, caplog):
    root = tmp_path / "jl"
    _tone(root / "female1_angry_1a_1.wav", sr=44100, channels=2)  # stereo 44.1 kHz: fine
    _tone(root / "female1_sad_1a_1.flac", fmt="FLAC")
    (root / "female1_happy_2a_1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEbroken")
    _tone(root / "female1_anxious_3a_1.wav")  # a secondary emotion: no canonical anchor
    _tone(root / "notes.wav")
    m = load_jl(root)
    assert sorted(m.labels) == ["angry", "sad"]
    reasons = {Path(p).name: r for p, r in m.skipped}
    assert reasons["female1_happy_2a_1.wav"].startswith("unreadable")
    assert reasons["female1_anxious_3a_1.wav"].startswith("unknown label")
    assert "does not match" in reasons["notes.wav"]
    assert "3 files skipped" in m.report()
    assert any("skipped" in rec.message for rec in caplog.records)
    stereo = read_audio(next(it.path for it in m if it.label == "angry"))
    assert stereo.ndim == 1 and len(stereo) == pytest.approx(0.3 * 16000, abs=2)


def test_generic_csv_manifest(tmp_path):
    _tone(tmp_path / "clips" / "a.wav")
    _tone(tmp_path / "clips" / "b.wav")
    _tone(tmp_path / "clips" / "c.wav")
    (tmp_path / "mine.csv").write_text(
        "path,label,speaker,split,valence,arousal\n"
        "clips/a.wav,Anger,p1,train,-0.5,0.7\n"
        "clips/b.wav,joy,p2,test,,\n"
        "clips/c.wav,tri,p2,test,,\n"
        "clips/missing.wav,neutral,p3,train,,\n"
        "clips/a.wav,grumpy,p1,train,,\n")
    m = read_csv_manifest(tmp_path / "mine.csv")
    assert list(m.labels) == ["angry", "happy", "sad"]
    assert m[0].valence == -0.5 and math.isnan(m[1].valence)
    assert list(m.speakers) == ["mine:p1", "mine:p2", "mine:p2"] and list(m.splits) == ["train", "test", "test"]
    assert [r.split(":")[0] for _, r in m.skipped] == ["missing file", "unknown label"]
    # round trip through the manifest CSV
    m.to_csv(tmp_path / "manifest.csv")
    again = Manifest.from_csv(tmp_path / "manifest.csv")
    assert list(again.labels) == list(m.labels) and list(again.speakers) == list(m.speakers)
    with pytest.raises(ValueError, match="path,label"):
        (tmp_path / "bad.csv").write_text("file,emotion\n")
        read_csv_manifest(tmp_path / "bad.csv")


def test_label_mapping_covers_every_adapter_code():
    from training.corpora import CREMAD_EMOTIONS, EMODB_EMOTIONS, IEMOCAP_CODES, MEAD_EMOTIONS, RAVDESS_EMOTIONS

    for table in (CREMAD_EMOTIONS, EMODB_EMOTIONS, IEMOCAP_CODES, MEAD_EMOTIONS, RAVDESS_EMOTIONS):
        assert set(table.values()) <= set(CANONICAL_EMOTIONS)
    from calibration.anchors import canonical_emotion

    for code in ("dis", "gio", "neu", "pau", "rab", "sor", "tri"):  # EMOVO
        assert canonical_emotion(code) in get_anchor_set("emovo").labels
    for name in ("angry", "excited", "happy", "sad", "neutral"):  # JL primary emotions
        assert canonical_emotion(name) in CANONICAL_EMOTIONS


def test_fold_assignment_is_speaker_independent():
    items = Manifest()
    from training.corpora import Item

    items.items = [Item(path=f"{s}_{k}.wav", label="happy", speaker=f"c:{s}", corpus="c")
                   for s in range(10) for k in range(3)]
    folds = speaker_folds(items, 5, seed=3)
    for s in range(10):
        assert len(set(folds[items.speakers == f"c:{s}"])) == 1
    assert sorted(np.bincount(folds)) == [6, 6, 6, 6, 6]
    marked = with_folds(items, folds, test_fold=0, val_fold=1)
    assert (marked.splits == "test").sum() == 6 and (marked.splits == "val").sum() == 6
