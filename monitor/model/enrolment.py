"""Enrolment at intake: a speaker baseline from a calm recording's speech segments.

The baseline is the only per-speaker statistic the monitor uses (see
``calibration/speaker.py`` for why it never comes from the monitored speech).
The caller cuts the recording with the live VAD (``monitor.audio.segmenter.segment_file``),
so the baseline describes the same kind of audio the model sees later; the
store keeps it with the patient (``Store.set_baseline``). The same segments
give the speaker's voiceprint (``enroll_voice``), which the live path uses to
tell the patient's voice from the clinician's (``Store.set_voiceprint``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from calibration.attribution import Voiceprint
from calibration.speaker import INTAKE, SpeakerBaseline
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.emotion import EmotionModel
from monitor.model.voiceprint import SpeakerEncoder, voiceprint_of

log = logging.getLogger(__name__)

#: Below this much speech a baseline is refused; below RECOMMENDED_SECONDS it is accepted with a warning.
MIN_SECONDS = 10.0
RECOMMENDED_SECONDS = 30.0


class EnrolmentError(ValueError):
    """The enrolment recording cannot give a baseline (too little speech, wrong normalisation)."""


def enroll(model: EmotionModel, segments: Sequence[np.ndarray], model_id: str, source: str = "",
           min_seconds: float = MIN_SECONDS) -> SpeakerBaseline:
    """A speaker's baseline: the mean raw backbone features of their enrolment speech segments.

    That is the space ``FeatureNormalizer.apply`` shifts in; the recording is taken to be neutral speech
    (``calibration.speaker.INTAKE``), so it is mapped onto the population's neutral speech. Raises
    :class:`EnrolmentError` when the model does not use baselines or there is
    too little speech.
    """
    if model.normalizer.mode != "enrolment":
        raise EnrolmentError(
            f"model {model_id} was trained with {model.normalizer.mode!r} normalisation and does not use "
            "enrolment baselines; enrolling would change nothing"
        )
    seconds = sum(len(s) for s in segments) / SAMPLE_RATE
    if seconds < min_seconds:
        raise EnrolmentError(
            f"{source or 'the enrolment recording'} holds {seconds:.1f} s of speech; enrolment needs at least "
            f"{min_seconds:.0f} s ({RECOMMENDED_SECONDS:.0f}-60 s of calm reading or talk is recommended)"
        )
    if seconds < RECOMMENDED_SECONDS:
        log.warning("enrolment has only %.0f s of speech; %.0f-60 s gives a steadier baseline", seconds,
                    RECOMMENDED_SECONDS)
    features = model.backbone_features(list(segments)).detach().float().cpu().numpy()
    return SpeakerBaseline(mean=np.asarray(features, dtype=np.float64).mean(axis=0), n_segments=len(segments),
                           seconds=float(seconds), model_id=model_id, source=source, composition=dict(INTAKE))


def enroll_voice(encoder: SpeakerEncoder, segments: Sequence[np.ndarray], source: str = "",
                 min_seconds: float = MIN_SECONDS) -> Voiceprint:
    """A speaker's voiceprint from the same enrolment segments (the patient's intake, or a clinician's recording).

    Needs as much speech as a baseline does: a voiceprint from a few seconds misjudges every later segment.
    """
    seconds = sum(len(s) for s in segments) / SAMPLE_RATE
    if seconds < min_seconds:
        raise EnrolmentError(
            f"{source or 'the enrolment recording'} holds {seconds:.1f} s of speech; a voiceprint needs at least "
            f"{min_seconds:.0f} s ({RECOMMENDED_SECONDS:.0f}-60 s of calm reading or talk is recommended)"
        )
    return voiceprint_of(encoder, segments, source=source)
