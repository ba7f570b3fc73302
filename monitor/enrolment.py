"""Enrolment at intake: a patient's speaker baseline from a calm recording, kept in the store.

The baseline is the only per-speaker statistic the monitor uses (see
``calibration/speaker.py`` for why it never comes from the monitored speech).
It is cut into speech segments by the same VAD as a live session, so the
baseline describes the same kind of audio the model will see later.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from calibration.speaker import SpeakerBaseline, enroll
from monitor.events import SAMPLE_RATE
from monitor.segmenter import VadConfig, segment_file

log = logging.getLogger(__name__)

#: Below this much speech a baseline is refused; below RECOMMENDED_SECONDS it is accepted with a warning.
MIN_SECONDS = 10.0
RECOMMENDED_SECONDS = 30.0


class EnrolmentError(ValueError):
    """The enrolment recording cannot give a baseline (too little speech, wrong normalisation)."""


def enrolment_segments(path: str | Path, vad: VadConfig | None = None) -> list[np.ndarray]:
    """The recording's speech, cut exactly as a live session would cut it."""
    return [s.audio for s in segment_file(path, vad)]


def enroll_patient(store, patient_id: str, model, bundle, path: str | Path, vad: VadConfig | None = None) -> SpeakerBaseline:
    """Measure the patient's baseline from ``path`` and make it their current one for this model."""
    if model.normalizer.mode != "enrolment":
        raise EnrolmentError(
            f"model {bundle.model_id} was trained with {model.normalizer.mode!r} normalisation and does not use "
            "enrolment baselines; enrolling would change nothing"
        )
    segments = enrolment_segments(path, vad)
    seconds = sum(len(s) for s in segments) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise EnrolmentError(
            f"{path} holds {seconds:.1f} s of speech; enrolment needs at least {MIN_SECONDS:.0f} s "
            f"({RECOMMENDED_SECONDS:.0f}-60 s of calm reading or talk is recommended)"
        )
    if seconds < RECOMMENDED_SECONDS:
        log.warning("enrolment has only %.0f s of speech; %.0f-60 s gives a steadier baseline", seconds, RECOMMENDED_SECONDS)
    baseline = enroll(model, segments, model_id=bundle.model_id, source=Path(path).name, split=False)
    store.set_baseline(patient_id, baseline.to_json(), bundle.model_id)
    log.info("patient %s enrolled: %.0f s of speech in %d segments (model %s)", patient_id, baseline.seconds,
             baseline.n_segments, bundle.model_id)
    return baseline


def stored_baseline(store, patient_id: str, bundle) -> SpeakerBaseline | None:
    """The patient's baseline for this exact model, or None (population statistics are used then)."""
    data = store.get_baseline(patient_id, bundle.model_id)
    if data is not None:
        return SpeakerBaseline.from_json(data)
    if store.get_baseline(patient_id) is not None:
        log.warning("patient %s was enrolled with another model; enrol again (--enroll) to calibrate %s",
                    patient_id, bundle.model_id)
    return None
