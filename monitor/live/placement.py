"""Whether a session's placement on the circumplex is calibrated to its speaker: one wording for every view.

Why one function: the dashboard header, the session summary, the store's
session rows and the reports must say the same thing about enrolment, and
must say plainly when placement is *not* calibrated (without an enrolment
baseline, a voice that is naturally low or tense is placed by population
averages, which can read as a mood). The status is derived from what the
session recorded in its settings (``normalization`` and ``speaker_baseline``,
written by the CLI), so no store column is needed and older sessions read as
uncalibrated rather than guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Short labels (tables, the dashboard header).
ENROLLED = "enrolled"
UNCALIBRATED = "uncalibrated"


def calibration_status(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"enrolled", "label", "text", "normalization", "baseline"}`` for a session's recorded settings."""
    settings = settings or {}
    mode = settings.get("normalization")
    baseline = settings.get("speaker_baseline")
    enrolled = isinstance(baseline, Mapping)
    if enrolled:
        seconds = baseline.get("seconds") if isinstance(baseline, Mapping) else None
        amount = f" from {float(seconds):.0f} s of speech" if isinstance(seconds, (int, float)) else ""
        text = f"Calibrated: the speaker is enrolled{amount}; placement is relative to their own calm voice."
    elif mode == "enrolment":
        text = ("Uncalibrated: the speaker is not enrolled, so placement uses population averages, "
                "not this speaker's own calm voice (enrol with --enroll).")
    elif mode in ("population", "none"):
        text = ("Uncalibrated: this model does not use speaker enrolment; placement uses population averages, "
                "not this speaker's own calm voice.")
    else:
        text = "Uncalibrated: no speaker enrolment was recorded for this session; placement uses population averages."
    return {"enrolled": enrolled, "label": ENROLLED if enrolled else UNCALIBRATED, "text": text,
            "normalization": mode if isinstance(mode, str) else None,
            "baseline": dict(baseline) if isinstance(baseline, Mapping) else None}
