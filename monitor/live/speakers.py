"""Whose voice each live segment is, and whether it counts as the patient's.

The worker calls :class:`SpeakerAttributor` on the same batch of segments it
embeds for emotion (one pass over the audio), so every point carries its
speaker. The rule itself is ``calibration.attribution`` with its calibrated
defaults; this module only binds it to a speaker encoder, the session's
enrolled voiceprints and the counting policy:

- ``count="all"`` (the default here): every voice counts, each point labelled.
- ``count="patient"``: only points attributed to the patient go into the heat
  map, the summaries and the store; the clinician's and unknown points still
  reach JSONL and the dashboard, labelled, so what was left out stays visible.

The command line's ``--count auto`` (``monitor.options.stored_attributor``)
picks ``patient`` when both voices are enrolled with an encoder good enough at
telling them apart, ``all`` otherwise (docs/store.md). With both voices
enrolled the segmenter also cuts segments where the voice changes
(:meth:`SpeakerAttributor.cut_points`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibration.attribution import (CHANGE_WINDOW_S, CLINICIAN, PATIENT, UNKNOWN, Attribution, AttributionConfig,
                                     Voiceprint, VoiceprintError, attribute, change_windows, speaker_change_cuts)
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.voiceprint import SpeakerEncoder

log = logging.getLogger(__name__)

COUNT_PATIENT, COUNT_ALL = "patient", "all"
COUNT_MODES = (COUNT_PATIENT, COUNT_ALL)


@dataclass
class SpeakerAttributor:
    """Attributes batches of 16 kHz segments to the enrolled patient, the clinician or nobody.

    The patient's voiceprint is required (without it there is nothing to count as the patient's); the
    clinician's is optional and, when given, makes the rule also demand a margin between the two voices.
    """

    encoder: SpeakerEncoder
    patient: Voiceprint
    clinician: Voiceprint | None = None
    #: The rule's settings; None: those calibrated for the encoder (``AttributionConfig.calibrated``).
    config: AttributionConfig | None = None
    count: str = COUNT_ALL
    #: Batches whose voiceprints failed (their segments became unknown, never the patient's).
    failed_batches: int = 0

    def __post_init__(self) -> None:
        if self.count not in COUNT_MODES:
            raise ValueError(f"count must be one of {COUNT_MODES}, got {self.count!r}")
        for role, print_ in ((PATIENT, self.patient), (CLINICIAN, self.clinician)):
            if print_ is None:
                continue
            if print_.encoder != self.encoder.name or print_.dim != self.encoder.dim:
                raise VoiceprintError(
                    f"the {role}'s voiceprint was made by {print_.encoder} ({print_.dim}-d), but the speaker encoder "
                    f"is {self.encoder.name} ({self.encoder.dim}-d); enrol again with this encoder")
            if print_.encoder_version and print_.encoder_version != self.encoder.version:
                log.warning("the %s's voiceprint was made by %s, the encoder now is %s; scores may drift",
                            role, print_.encoder_version, self.encoder.version)
        self.rule = self.config or AttributionConfig.calibrated(self.encoder.name)

    def __call__(self, waves: Sequence[np.ndarray]) -> list[Attribution]:
        """One attribution per waveform; if the encoder fails, every segment of the batch is unknown."""
        if not waves:
            return []
        seconds = [len(w) / SAMPLE_RATE for w in waves]
        try:
            embeddings = self.encoder.embed(list(waves))
            return attribute(embeddings, seconds, self.patient, self.clinician, self.rule)
        except Exception as exc:  # noqa: BLE001 - a voiceprint failure must not cost the emotion point
            self.failed_batches += 1
            log.warning("speaker attribution failed for %d segment(s), marked unknown: %s", len(waves), exc)
            return [Attribution(UNKNOWN, None, None, None, "error") for _ in waves]

    @property
    def cuts_turns(self) -> bool:
        """Whether long segments are cut where the voice changes: only with both voices enrolled."""
        return self.clinician is not None

    def cut_points(self, audio: np.ndarray) -> list[float]:
        """Where a segment changes from one enrolled voice to the other (seconds from its start; the segmenter
        cuts there, so each turn becomes its own point). Empty when only the patient is enrolled, the segment
        is short, or the encoder fails (the segment then stays whole: a cut is an improvement, never needed)."""
        starts = change_windows(len(audio) / SAMPLE_RATE)
        if self.clinician is None or not len(starts):
            return []
        width = int(CHANGE_WINDOW_S * SAMPLE_RATE)
        try:
            windows = self.encoder.embed([audio[int(t * SAMPLE_RATE):int(t * SAMPLE_RATE) + width] for t in starts])
            lean = self.patient.score(windows) - self.clinician.score(windows)
        except Exception as exc:  # noqa: BLE001 - attribution must never cost a segment
            log.warning("speaker change search failed (segment kept whole): %s", exc)
            return []
        return speaker_change_cuts(starts, lean)

    def counts(self, speaker: str | None) -> bool:
        """Whether a point of this speaker counts as the patient's (heat map, summaries, store)."""
        return self.count == COUNT_ALL or speaker == PATIENT

    def describe(self) -> dict[str, object]:
        """What the session records and the dashboard's ``hello`` shows about attribution."""
        return {
            "counting": self.count,
            "patient": True,
            "clinician": self.clinician is not None,
            "encoder": self.encoder.name,
            "threshold": self.rule.threshold,
            "pair_threshold": self.rule.floor if self.clinician is not None else None,
            "margin": self.rule.margin,
            "min_seconds": self.rule.min_seconds,
        }


def not_attributing() -> dict[str, object]:
    """The same description for a session without a patient voiceprint: every voice counts."""
    return {"counting": COUNT_ALL, "patient": False, "clinician": False, "encoder": None, "threshold": None,
            "pair_threshold": None, "margin": None, "min_seconds": None}


def empty_speaker_seconds() -> dict[str, float]:
    return {PATIENT: 0.0, CLINICIAN: 0.0, UNKNOWN: 0.0}
