"""Speaker calibration: enrolment-based normalisation, stored enrolments, and the persistent-mood test.

The persistent-mood test replays real clips of speakers the shipped model's
head never trained on (RAVDESS actors 19 and 20, EMOVO m3: its validation
speakers) through the runtime path (``EmotionModel.embed_waveforms`` in
session order, then the bundle's reducer). Each speaker is enrolled from their
neutral/calm clips, which are then not evaluated. One session per emotion (a
persistent mood) must keep >= 90% of the UAR and anchor CCC that the same clips
get in one mixed session. Self-normalisation (re-centring on the session's own
speech) is replayed as the control and must fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.speaker import (FeatureNormalizer, SpeakerBaseline, baselines_from_clips, estimated_baselines,
                                 fit_normalizer)
from monitor.audio.segmenter import segment_signal
from monitor.model.enrolment import enroll
from training.mood import persistent_mood_scores, replay_sessions

from tests.conftest import corpus_dir

#: Speakers held out of the default model's head training (its early-stopping speakers).
HELD_OUT = {"ravdess": ("19", "20"), "emovo": ("m3",)}


@pytest.fixture(scope="module", params=["egemaps", "whisper"])
def default_model(request):
    """Each shipped bundle in turn (the default and the light fallback): both must keep a persistent mood."""
    from monitor.model.bundle import SHIPPED_BUNDLES, load_bundle

    if request.param not in SHIPPED_BUNDLES:
        pytest.skip(f"no shipped bundle named {request.param}")
    bundle = load_bundle(request.param)
    return bundle, bundle.build_model(device="cpu")


@pytest.fixture(scope="module")
def held_out_clips(default_model):
    """(backbone features, manifest) of the held-out speakers' clips, through the runtime's own backbone.

    eGeMAPS features come from the project's feature cache (.cache/features, filled on the first run by the
    same EgemapsBackbone the runtime uses); other backbones embed the clips here, one clip per segment.
    """
    from monitor.audio.io import read_audio
    from training.corpora import load_emovo, load_ravdess
    from training.features import extract, make_featurizer

    bundle, model = default_model
    rav = load_ravdess(corpus_dir("ravdess"), check_audio=False)
    emo = load_emovo(corpus_dir("emovo"), check_audio=False)
    manifest = rav.where(lambda it: it.speaker.split(":")[1] in HELD_OUT["ravdess"]) + \
        emo.where(lambda it: it.speaker.split(":")[1] in HELD_OUT["emovo"])
    if bundle.backbone["kind"] == "egemaps":
        table = extract(manifest, make_featurizer(bundle.backbone["feature_set"]), progress=False,
                        cache=Path(__file__).resolve().parents[1] / ".cache" / "features")
        assert not table.failed
        return table.X.astype(np.float64), table.manifest
    feats = np.concatenate([model.backbone_features([read_audio(item.path)]).numpy() for item in manifest])
    return feats.astype(np.float64), manifest


# ------------------------------------------------------------------------------ normaliser semantics


def test_enrolment_training_shift_matches_the_runtime_shift():
    rng = np.random.default_rng(0)
    speakers = np.repeat(["a", "b", "c"], 40)
    labels = np.tile(["neutral"] * 10 + ["happy"] * 10 + ["sad"] * 10 + ["angry"] * 10, 3)
    offsets = {"a": 0.0, "b": 3.0, "c": -2.0}  # e.g. a speaker's pitch level
    X = rng.normal(size=(120, 5)) + np.asarray([offsets[s] for s in speakers])[:, None]
    X[labels == "happy"] += 1.0
    norm, Xn = fit_normalizer(X, labels, speakers, "enrolment")
    assert norm.mode == "enrolment"
    # after the shift every speaker's neutral clips sit on the same reference
    for s in "abc":
        m = (speakers == s) & (labels == "neutral")
        np.testing.assert_allclose(Xn[m].mean(axis=0), Xn[(labels == "neutral")].mean(axis=0), atol=1e-6)
    # the training-side normalisation is exactly what the runtime applies with the speaker's baseline
    bases = baselines_from_clips(X, labels, speakers)
    for s in "abc":
        m = speakers == s
        np.testing.assert_allclose(norm.apply(X[m], bases[s]), Xn[m], rtol=1e-5, atol=1e-5)
    # state round trip: the bundle records the mode and the runtime applies the same
    params, arrays = norm.to_state()
    again = FeatureNormalizer.from_state(params, arrays)
    np.testing.assert_allclose(again.apply(X[:5], bases["b"]), norm.apply(X[:5], bases["b"]))
    # without an enrolment the runtime uses population statistics only (no shift)
    np.testing.assert_allclose(norm.apply(X[:5]), (X[:5] - norm.mean_) / norm.scale_, rtol=1e-5, atol=1e-6)
    pop, _ = fit_normalizer(X, labels, speakers, "population")
    assert pop.speaker_offset(bases["b"]) is None


def test_training_speakers_without_neutral_clips_get_an_estimated_baseline_only_when_asked():

    rng = np.random.default_rng(1)
    emotion_shift = {"neutral": 0.0, "happy": 1.0, "sad": -0.5, "angry": 2.0, "excited": 1.5}
    rows = [(spk, emo) for spk in ("a", "b") for emo in ("neutral", "happy", "sad", "angry") for _ in range(10)]
    rows += [("jl", emo) for emo in ("happy", "sad", "angry", "excited") for _ in range(10)]  # no neutral clips
    speakers = np.asarray([r[0] for r in rows])
    labels = np.asarray([r[1] for r in rows])
    offsets = {"a": 0.0, "b": 1.0, "jl": 4.0}
    X = (np.asarray([[offsets[s] + emotion_shift[e]] * 3 for s, e in rows]) + 0.01 * rng.normal(size=(len(rows), 3)))
    known = baselines_from_clips(X, labels, speakers)
    est = estimated_baselines(X, labels, speakers, known)
    assert set(est) == {"jl"}  # only the speaker without neutral/calm clips
    np.testing.assert_allclose(est["jl"].mean, [4.0] * 3, atol=0.02)  # its neutral level, not its emotional mean
    # off by default: without estimate_missing that speaker is left unshifted (population statistics only)
    _, plain = fit_normalizer(X, labels, speakers, "enrolment")
    _, shifted = fit_normalizer(X, labels, speakers, "enrolment", estimate_missing=True)
    jl = speakers == "jl"
    ref = shifted[(labels == "happy") & (speakers == "a")].mean(axis=0)
    np.testing.assert_allclose(shifted[(labels == "happy") & jl].mean(axis=0), ref, atol=0.1)
    assert np.abs(plain[(labels == "happy") & jl].mean(axis=0) - ref).min() > 0.5


# ------------------------------------------------------------------------------ enrolment storage


def test_enrolment_is_stored_with_the_patient_and_reused_across_two_sessions(tmp_path, default_model, held_out_clips):
    from monitor.history.store import Store

    from monitor.audio.io import read_audio

    bundle, model = default_model
    _, manifest = held_out_clips
    spk = manifest.speakers == "ravdess:20"
    calm = np.flatnonzero(spk & np.isin(manifest.labels, ["neutral", "calm"]))
    sad = np.flatnonzero(spk & (manifest.labels == "sad"))
    waves = {i: read_audio(manifest[i].path) for i in np.concatenate([calm, sad])}
    enrolment_audio = np.concatenate([waves[i] for i in calm])  # one intake recording of calm speech
    segments = [s.audio for s in segment_signal(enrolment_audio)]  # cut by the live VAD, as --enroll does
    baseline = enroll(model, segments, model_id=bundle.model_id, source="intake reading")
    assert baseline.n_segments >= 2 and baseline.seconds > 5 and baseline.mean.shape == (model.backbone.feature_dim,)

    db = tmp_path / "monitor.sqlite"
    store = Store.open(db)
    store.set_baseline("P-17", baseline.to_json(), bundle.model_id)
    store.close()

    session_outputs = []
    for _ in range(2):  # two later sessions, each opening the store afresh
        store = Store.open(db)
        stored = store.get_baseline("P-17", bundle.model_id)
        store.close()
        assert stored is not None
        base = SpeakerBaseline.from_json(stored)
        np.testing.assert_allclose(base.mean, baseline.mean)
        emb, probs = model.embed_waveforms([waves[i] for i in sad], base)
        session_outputs.append((emb, probs))
    np.testing.assert_allclose(session_outputs[0][0], session_outputs[1][0], rtol=1e-6)
    # the enrolment is really applied (differs from population statistics alone) ...
    emb_pop, _ = model.embed_waveforms([waves[i] for i in sad], None)
    assert not np.allclose(emb_pop, session_outputs[0][0])
    # ... is tied to the model it was made with, and is replaceable (the old one is kept as history)
    store = Store.open(db)
    assert store.get_baseline("P-17", "some-other-model@1") is None
    other = enroll(model, [s.audio for s in segment_signal(np.concatenate([waves[i] for i in calm[:3]]))],
                   model_id=bundle.model_id, min_seconds=0.0)
    store.set_baseline("P-17", other.to_json(), bundle.model_id)
    np.testing.assert_allclose(SpeakerBaseline.from_json(store.get_baseline("P-17", bundle.model_id)).mean, other.mean)
    assert len(store.baseline_history("P-17")) == 2
    store.close()


# ------------------------------------------------------------------------------ persistent mood


def _runtime_predict(bundle, model):
    """The runtime path on precomputed backbone features: normaliser + head (+ enrolment) -> reducer."""

    def predict(raw, baseline):
        probs_all, points_all = [], []
        for i in range(0, len(raw), 8):  # the worker embeds at most 8 segments together
            emb, probs = model.embed_features(raw[i:i + 8], baseline)
            probs_all.append(probs)
            points_all.append(bundle.reducer.transform(emb))
        return np.concatenate(probs_all), np.concatenate(points_all)

    return predict


@pytest.mark.slow
def test_persistent_mood_keeps_uar_and_ccc_and_self_normalisation_fails(default_model, held_out_clips):
    bundle, model = default_model
    feats, manifest = held_out_clips
    # the features are the runtime backbone's features
    from monitor.audio.io import read_audio

    np.testing.assert_allclose(model.backbone_features([read_audio(manifest[0].path)]).numpy()[0], feats[0],
                               rtol=1e-5, atol=1e-6)
    assert bundle.normalizer.mode == "enrolment"
    anchors = dict(bundle.anchors)
    predict = _runtime_predict(bundle, model)
    ok = persistent_mood_scores(replay_sessions(feats, manifest.labels, manifest.speakers, predict, "enrolment"),
                                model.labels, anchors)
    # the evaluated clips are all non-enrolment clips: 6 RAVDESS + 6 EMOVO emotions
    assert ok["uar_mixed"] > 0.25, ok  # the model does something on these speakers at all
    for key in ("uar", "ccc_valence", "ccc_arousal"):
        assert ok[f"{key}_ratio"] >= 0.9, (key, ok)

    bad = persistent_mood_scores(replay_sessions(feats, manifest.labels, manifest.speakers, predict, "self"),
                                 model.labels, anchors)
    failed = [key for key in ("uar", "ccc_valence", "ccc_arousal") if not bad[f"{key}_ratio"] >= 0.9]
    assert failed, f"self-normalisation should fail the persistent-mood test, got {bad}"
    assert bad["uar_single"] < bad["uar_mixed"]


def test_replay_never_uses_enrolment_clips_for_evaluation():
    labels = np.asarray(["neutral", "calm", "sad", "sad", "happy", "neutral", "angry"])
    speakers = np.asarray(["a", "a", "a", "a", "a", "b", "b"])
    X = np.arange(len(labels), dtype=np.float64)[:, None] * np.ones((1, 3))
    seen = []

    def predict(raw, baseline):
        seen.append((raw[:, 0].tolist(), None if baseline is None else float(baseline.mean[0])))
        assert baseline is None or baseline.composition  # the enrolment says what speech it is
        return np.tile([[0.5, 0.5]], (len(raw), 1)), np.zeros((len(raw), 2))

    res = replay_sessions(X, labels, speakers, predict, "enrolment")
    assert sorted(res.labels.tolist()) == ["angry", "happy", "sad", "sad"]
    evaluated = {v for rows, _ in seen for v in rows}
    assert evaluated == {2.0, 3.0, 4.0, 6.0}  # never the neutral/calm clips 0, 1, 5
    assert {b for _, b in seen} == {0.5, 5.0}  # speaker a: mean of clips 0 and 1; speaker b: clip 5


def test_enrolment_maps_like_to_like_a_neutral_intake_onto_the_populations_neutral_speech():
    """A neutral-only baseline must not be mapped onto a neutral/calm mixture (that moved neutral toward calm)."""
    rng = np.random.default_rng(0)
    neutral, calm = np.array([0.0, 0.0]), np.array([4.0, -2.0])
    X, labels, speakers = [], [], []
    for s, offset in (("a", 1.0), ("b", -1.0), ("c", 3.0)):
        for label, centre, n in (("neutral", neutral, 4), ("calm", calm, 8), ("sad", np.array([-3.0, -1.0]), 6)):
            X.append(centre + offset + rng.normal(0, 0.1, (n, 2)))
            labels += [label] * n
            speakers += [s] * n
    X = np.concatenate(X)
    normalizer, _ = fit_normalizer(X, np.array(labels), np.array(speakers), "enrolment")
    # a new speaker, +5 off the population, enrolled from neutral speech only (an intake reading)
    intake = SpeakerBaseline(mean=neutral + 5.0, n_segments=10, seconds=30.0, model_id="m",
                             composition={"neutral": 1.0})
    shifted = normalizer.apply((neutral + 5.0)[None], intake)
    population_neutral = normalizer.apply(normalizer.references_["neutral"][None])
    np.testing.assert_allclose(shifted, population_neutral, atol=1e-6)
    # a baseline recorded before compositions existed keeps the old mapping (the neutral/calm mean)
    legacy = SpeakerBaseline(mean=neutral + 5.0, n_segments=10, seconds=30.0, model_id="m")
    np.testing.assert_allclose(normalizer.speaker_offset(legacy), normalizer.reference_ - (neutral + 5.0))
    again = SpeakerBaseline.from_json(intake.to_json())
    assert again.composition == {"neutral": 1.0} and SpeakerBaseline.from_json(legacy.to_json()).composition is None
    # and the per-emotion references travel with the normaliser's state
    from calibration.speaker import FeatureNormalizer

    params, arrays = normalizer.to_state()
    restored = FeatureNormalizer.from_state(params, arrays)
    np.testing.assert_allclose(restored.target({"neutral": 1.0}), normalizer.references_["neutral"])
