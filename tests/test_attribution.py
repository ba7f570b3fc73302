"""The attribution rule and the voiceprint value type (pure numpy, no audio)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.attribution import (CLINICIAN, PATIENT, UNKNOWN, AttributionConfig, Voiceprint, VoiceprintError,
                                     attribute, cosine_scores, decide, equal_error_rate, rates_at, summarize)

CFG = AttributionConfig(threshold=0.75, margin=0.05, min_seconds=1.0)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def print_of(vector: np.ndarray, encoder: str = "enc", version: str = "1") -> Voiceprint:
    return Voiceprint(vector=vector, n_segments=3, seconds=30.0, encoder=encoder, encoder_version=version)


def test_too_short_is_unknown_even_when_the_voice_matches():
    a = decide(0.95, 0.2, seconds=0.6, config=CFG)
    assert (a.speaker, a.reason) == (UNKNOWN, "short")
    assert a.speaker_score == pytest.approx(0.95)


def test_below_threshold_is_unknown():
    a = decide(0.70, 0.30, seconds=3.0, config=CFG)
    assert (a.speaker, a.reason) == (UNKNOWN, "below_threshold")


def test_a_margin_too_small_with_both_enrolled_is_unknown():
    a = decide(0.82, 0.80, seconds=3.0, config=CFG)  # both match, neither by the margin: overlapped speech
    assert (a.speaker, a.reason) == (UNKNOWN, "ambiguous")
    assert a.speaker_score == pytest.approx(0.82)


def test_clear_matches_name_the_speaker_with_their_score():
    p = decide(0.90, 0.60, seconds=2.0, config=CFG)
    assert (p.speaker, p.reason, p.speaker_score) == (PATIENT, "match", pytest.approx(0.90))
    c = decide(0.55, 0.88, seconds=2.0, config=CFG)
    assert (c.speaker, c.speaker_score) == (CLINICIAN, pytest.approx(0.88))
    assert (c.patient_score, c.clinician_score) == (pytest.approx(0.55), pytest.approx(0.88))


def test_patient_only_enrolment_never_calls_a_clear_non_match_the_patient():
    a = decide(0.40, None, seconds=5.0, config=CFG)
    assert (a.speaker, a.reason) == (UNKNOWN, "below_threshold")
    assert a.clinician_score is None
    assert decide(0.80, None, seconds=5.0, config=CFG).speaker == PATIENT
    rng = np.random.default_rng(0)
    for p, secs in zip(rng.uniform(-1, 1, 500), rng.uniform(0, 6, 500), strict=True):
        a = decide(float(p), None, float(secs), CFG)
        assert a.speaker in (PATIENT, UNKNOWN)
        assert (a.speaker == PATIENT) == (p >= CFG.threshold and secs >= CFG.min_seconds)


def test_nothing_enrolled_is_unknown():
    a = decide(None, None, seconds=5.0, config=CFG)
    assert (a.speaker, a.speaker_score, a.reason) == (UNKNOWN, None, "no_voiceprint")


def test_clinician_only_enrolment_names_only_the_clinician():
    assert decide(None, 0.9, 3.0, CFG).speaker == CLINICIAN
    assert decide(None, 0.5, 3.0, CFG).speaker == UNKNOWN


def test_attribute_scores_vectors_against_the_voiceprints():
    patient = print_of(unit(1, 0, 0))
    clinician = print_of(unit(0, 1, 0))
    emb = np.stack([unit(1, 0.1, 0), unit(0.1, 1, 0), unit(1, 1, 0), unit(0, 0, 1), unit(1, 0.1, 0)])
    secs = [3.0, 3.0, 3.0, 3.0, 0.4]
    out = attribute(emb, secs, patient, clinician, CFG)
    assert [a.speaker for a in out] == [PATIENT, CLINICIAN, UNKNOWN, UNKNOWN, UNKNOWN]
    assert out[0].speaker_score == pytest.approx(float(cosine_scores(emb[0], patient.vector)))
    assert summarize(out) == {PATIENT: 1, CLINICIAN: 1, UNKNOWN: 3}
    alone = attribute(emb, secs, patient, None, CFG)
    assert [a.speaker for a in alone] == [PATIENT, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN]


def test_voiceprints_of_different_encoders_or_sizes_are_refused():
    with pytest.raises(VoiceprintError, match="different encoders"):
        attribute(unit(1, 0, 0), 2.0, print_of(unit(1, 0, 0)), print_of(unit(0, 1, 0), version="2"))
    with pytest.raises(VoiceprintError, match="dimension"):
        attribute(unit(1, 0), 2.0, print_of(unit(1, 0, 0)))


def test_voiceprint_json_round_trip(tmp_path):
    vp = Voiceprint.from_embeddings([unit(1, 0, 0), unit(0, 1, 0)], [3.0, 1.0], encoder="resemblyzer-ge2e",
                                    encoder_version="resemblyzer 0.1.4", source="intake.wav")
    assert vp.n_segments == 2 and vp.seconds == pytest.approx(4.0)
    np.testing.assert_allclose(vp.vector, unit(3, 1, 0), atol=1e-6)  # duration-weighted mean, unit length
    back = Voiceprint.from_json(vp.to_json())
    np.testing.assert_array_equal(back.vector, vp.vector)
    assert (back.n_segments, back.seconds, back.encoder, back.encoder_version, back.source, back.created) == (
        vp.n_segments, vp.seconds, vp.encoder, vp.encoder_version, vp.source, vp.created)
    vp.save(tmp_path / "vp.json")
    np.testing.assert_array_equal(Voiceprint.load(tmp_path / "vp.json").vector, vp.vector)


@pytest.mark.parametrize("bad", [{"kind": "baseline"}, {"vector": [0.0, 0.0], "n_segments": 1, "seconds": 1.0,
                                                        "encoder": "e"},
                                 {"vector": [1.0, 0.0], "n_segments": 1, "seconds": 1.0, "encoder": "e", "dim": 3},
                                 {"vector": [1.0], "seconds": 1.0, "encoder": "e"}])
def test_malformed_voiceprints_are_refused(bad):
    with pytest.raises(VoiceprintError):
        Voiceprint.from_json(bad)


def test_equal_error_rate_and_rates():
    assert equal_error_rate([0.9, 0.8, 0.85], [0.1, 0.2, 0.3])[0] == 0.0
    rng = np.random.default_rng(1)
    tgt, imp = rng.normal(1.0, 1.0, 20000), rng.normal(-1.0, 1.0, 20000)
    eer, thr = equal_error_rate(tgt, imp)
    assert eer == pytest.approx(0.1587, abs=0.01) and thr == pytest.approx(0.0, abs=0.05)  # Phi(-1)
    miss, fa = rates_at(tgt, imp, thr)
    assert miss == pytest.approx(eer, abs=0.01) and fa == pytest.approx(eer, abs=0.01)


def test_config_is_validated():
    with pytest.raises(ValueError):
        AttributionConfig(threshold=1.5)
    with pytest.raises(ValueError):
        AttributionConfig(margin=-0.1)


def test_with_both_voices_enrolled_the_pair_threshold_is_the_floor():
    """Two known voices: a lower floor than the one-voice threshold, and the margin between them decides."""
    cfg = AttributionConfig(threshold=0.6, margin=0.1, min_seconds=1.0, pair_threshold=0.3)
    assert cfg.floor == 0.3 and CFG.floor == CFG.threshold  # without a pair threshold: the threshold
    a = decide(0.45, 0.05, 3.0, cfg)
    assert (a.speaker, a.reason) == (PATIENT, "match")  # below 0.6, but clearly the patient of the two
    assert decide(0.45, None, 3.0, cfg).speaker == UNKNOWN  # alone, 0.45 is not enough
    assert decide(0.05, 0.42, 3.0, cfg).speaker == CLINICIAN
    assert decide(0.25, 0.05, 3.0, cfg).reason == "below_threshold"  # a third voice: under the floor for both
    assert decide(0.45, 0.40, 3.0, cfg).reason == "ambiguous"
    with pytest.raises(ValueError, match="pair_threshold"):
        AttributionConfig(pair_threshold=-2.0)


def test_settings_are_calibrated_per_encoder_and_an_unknown_encoder_is_refused():
    from calibration.attribution import CALIBRATED

    assert set(CALIBRATED) >= {"ecapa-voxceleb", "resemblyzer-ge2e"}
    assert AttributionConfig.calibrated("ecapa-voxceleb") is CALIBRATED["ecapa-voxceleb"]
    with pytest.raises(VoiceprintError, match="no attribution settings"):
        AttributionConfig.calibrated("fake-encoder")
    # attribute() without a config uses the voiceprints' encoder's calibrated settings
    patient = print_of(unit(1, 0, 0), encoder="ecapa-voxceleb")
    got = attribute(np.stack([unit(1, 0.05, 0), unit(0, 0, 1)]), [3.0, 3.0], patient)
    assert [a.speaker for a in got] == [PATIENT, UNKNOWN]
    with pytest.raises(VoiceprintError, match="no attribution settings"):
        attribute(unit(1, 0, 0), 3.0, print_of(unit(1, 0, 0)))


def test_speaker_change_cuts_need_a_flip_between_the_voices():
    from calibration.attribution import CHANGE_WINDOW_S, change_windows, speaker_change_cuts

    starts = change_windows(8.0)  # windows of 1.6 s every 0.4 s
    assert len(change_windows(3.1)) == 0 and len(starts) == 17
    lean = np.where(starts + CHANGE_WINDOW_S / 2 < 4.0, 0.4, -0.4)  # patient, then clinician
    (cut,) = speaker_change_cuts(starts, lean)
    assert 3.2 <= cut <= 4.8
    assert speaker_change_cuts(starts, np.full(len(starts), 0.4)) == []  # one voice throughout
    assert speaker_change_cuts(starts, lean * 0.2) == []  # leans too weak (0.08 < 0.15): no cut
    three = np.select([starts < 2.0, starts < 4.4], [0.5, -0.5], 0.5)  # patient, clinician, patient again
    cuts = speaker_change_cuts(starts, three)
    assert len(cuts) == 2 and cuts[1] - cuts[0] >= CHANGE_WINDOW_S
