"""The embedding worker: batching, failure isolation, draining on close."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from monitor.audio.frames import Segment
from monitor.live.worker import EmbeddingWorker, WorkerConfig


class RecordingModel:
    """Embeds by simple statistics; fails on segments whose audio is all 0.5 (a 'poisoned' segment)."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[int] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def embed_waveforms(self, waves, baseline=None):
        self.gate.wait()
        self.batches.append(len(waves))
        if any(np.all(w == 0.5) for w in waves):
            raise RuntimeError("poisoned segment")
        time.sleep(self.delay)
        emb = np.stack([np.full(100, w.mean(), dtype=np.float32) for w in waves])
        probs = np.tile(np.array([0.7, 0.2, 0.1], dtype=np.float32), (len(waves), 1))
        return emb, probs


def seg(i: int, value: float = 0.1) -> Segment:
    return Segment(index=i, t_start=float(i), t_end=i + 1.0, audio=np.full(1600, value, dtype=np.float32),
                   closed_at=time.monotonic())


def drain(worker: EmbeddingWorker) -> list:
    out = []
    while (item := worker.results.get(timeout=10)) is not None:
        out.append(item)
    return out


def test_waiting_segments_are_batched_up_to_max_batch():
    model = RecordingModel()
    model.gate.clear()  # hold the first call so segments pile up behind it
    worker = EmbeddingWorker(model, WorkerConfig(max_batch=4, max_wait_ms=5))
    worker.start()
    worker.submit(seg(0))
    time.sleep(0.05)
    for i in range(1, 10):
        worker.submit(seg(i))
    model.gate.set()
    worker.close()
    results = drain(worker)
    assert [r.segment.index for r in results] == list(range(10))
    assert model.batches[0] == 1 and max(model.batches) == 4 and sum(model.batches) == 10
    assert worker.batches == len(model.batches)


def test_one_bad_segment_is_skipped_and_counted():
    model = RecordingModel()
    worker = EmbeddingWorker(model, WorkerConfig(max_batch=8, max_wait_ms=50))
    for i in range(5):
        worker.submit(seg(i, 0.5 if i == 2 else 0.1))
    worker.start()
    worker.close()
    results = drain(worker)
    assert [r.segment.index for r in results] == [0, 1, 3, 4]
    assert worker.failed_segments == 1
    assert "segment 2" in worker.last_error and "poisoned" in worker.last_error
    np.testing.assert_allclose(results[0].embedding, 0.1, rtol=1e-5)
    assert results[0].probabilities.shape == (3,)


def test_queue_is_bounded_and_applies_back_pressure():
    model = RecordingModel()
    model.gate.clear()
    worker = EmbeddingWorker(model, WorkerConfig(queue_size=3, max_batch=1))
    worker.start()
    worker.submit(seg(0))
    time.sleep(0.05)  # the worker holds segment 0 inside the (gated) model
    for i in range(1, 4):
        worker.submit(seg(i), timeout=1)
    with pytest.raises(queue.Full):  # the producer is held back, memory does not grow
        worker.submit(seg(4), timeout=0.1)
    model.gate.set()
    worker.close()
    assert len(drain(worker)) == 4


def test_close_drains_everything_queued():
    model = RecordingModel(delay=0.01)
    worker = EmbeddingWorker(model, WorkerConfig(max_batch=2))
    worker.start()
    for i in range(7):
        worker.submit(seg(i))
    worker.close()
    assert len(drain(worker)) == 7
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_bad_config():
    with pytest.raises(ValueError):
        WorkerConfig(max_batch=0)


class FakeEncoder:
    """A speaker encoder whose embedding is the segment's level: 0.1 sounds like the patient, 0.3 like the
    clinician, 0.2 like both (overlapped speech); fails when told to."""

    name, version, dim = "fake-encoder", "1", 2

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.batches: list[int] = []

    def embed(self, waves):
        self.batches.append(len(waves))
        if self.fail:
            raise RuntimeError("encoder broke")
        angle = np.array([(float(np.mean(w)) - 0.1) / 0.2 * (np.pi / 2) for w in waves])
        return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def _attributor(fail: bool = False):
    from calibration.attribution import AttributionConfig, Voiceprint
    from monitor.live.speakers import SpeakerAttributor

    patient = Voiceprint(np.array([1.0, 0.0]), 1, 10.0, "fake-encoder", "1")
    clinician = Voiceprint(np.array([0.0, 1.0]), 1, 10.0, "fake-encoder", "1")
    return SpeakerAttributor(FakeEncoder(fail), patient, clinician,
                             config=AttributionConfig(threshold=0.86, margin=0.05, min_seconds=1.0))


def long_seg(i: int, value: float) -> Segment:
    return Segment(index=i, t_start=2.0 * i, t_end=2.0 * i + 1.5, audio=np.full(24000, value, dtype=np.float32),
                   closed_at=time.monotonic())


def test_segments_are_attributed_in_the_same_batch_as_their_emotion():
    model, speakers = RecordingModel(), _attributor()
    model.gate.clear()
    worker = EmbeddingWorker(model, WorkerConfig(max_batch=4, max_wait_ms=5), speakers=speakers)
    worker.start()
    worker.submit(long_seg(0, 0.1))
    time.sleep(0.05)
    for i, value in enumerate((0.3, 0.2, 0.1), start=1):
        worker.submit(long_seg(i, value))
    model.gate.set()
    worker.close()
    results = drain(worker)
    assert [r.attribution.speaker for r in results] == ["patient", "clinician", "unknown", "patient"]
    assert speakers.encoder.batches == model.batches  # one voiceprint call per emotion batch, same segments


def test_a_failing_speaker_encoder_makes_segments_unknown_never_the_patient():
    model, speakers = RecordingModel(), _attributor(fail=True)
    worker = EmbeddingWorker(model, WorkerConfig(), speakers=speakers)
    worker.start()
    worker.submit(long_seg(0, 0.1))
    worker.close()
    (result,) = drain(worker)
    assert result.attribution.speaker == "unknown" and result.attribution.reason == "error"
    assert speakers.failed_batches == 1 and worker.failed_segments == 0  # the emotion point still goes through


def test_voiceprints_from_another_encoder_are_refused():
    from calibration.attribution import Voiceprint, VoiceprintError
    from monitor.live.speakers import SpeakerAttributor

    with pytest.raises(VoiceprintError, match="enrol again"):
        SpeakerAttributor(FakeEncoder(), Voiceprint(np.array([1.0, 0.0]), 1, 10.0, "resemblyzer-ge2e"))
    # an encoder no settings were calibrated for: refused rather than run with another encoder's cosines
    with pytest.raises(VoiceprintError, match="no attribution settings are calibrated"):
        SpeakerAttributor(FakeEncoder(), Voiceprint(np.array([1.0, 0.0]), 1, 10.0, "fake-encoder", "1"))


def test_a_segment_holding_both_voices_is_cut_where_the_voice_changes():
    """With both voices enrolled: 3 s in the patient's voice then 3 s in the clinician's, cut near 3 s;
    one voice throughout, a short segment, or only the patient enrolled: no cut."""
    from calibration.attribution import AttributionConfig, Voiceprint
    from monitor.live.speakers import SpeakerAttributor

    speakers = _attributor()
    assert speakers.cuts_turns
    turn = np.concatenate([np.full(48000, 0.1), np.full(48000, 0.3)]).astype(np.float32)
    (cut,) = speakers.cut_points(turn)
    assert abs(cut - 3.0) <= 0.4 + 1e-9  # the windows are 0.4 s apart
    assert speakers.cut_points(np.full(96000, 0.1, np.float32)) == []
    assert speakers.cut_points(turn[40000:80000]) == []  # 2.5 s: shorter than two windows
    alone = SpeakerAttributor(FakeEncoder(), Voiceprint(np.array([1.0, 0.0]), 1, 10.0, "fake-encoder", "1"),
                              config=AttributionConfig(threshold=0.86))
    assert not alone.cuts_turns and alone.cut_points(turn) == []
    assert _attributor(fail=True).cut_points(turn) == []  # a failing encoder keeps the segment whole
