"""The backbones a bundle can name, and how a bundle's spec becomes one.

- ``WavLMBackbone``: the method's self-supervised model (WavLM, or wav2vec2 /
  HuBERT) loaded with ``from_pretrained`` from a hub id or a local folder, with
  learnable softmax weights over all hidden layers and mean pooling over the
  frames that hold real audio.
- ``WhisperBackbone``: Whisper's encoder (offline from the installed
  package, or any transformers / CTranslate2 Whisper checkpoint), layer-weighted
  and mean-pooled the same way.
- ``EgemapsBackbone``: openSMILE functionals (eGeMAPSv02 by default), the light
  fallback that needs no weights at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.model.base import Backbone, BackboneLoadError
from monitor.model.egemaps import EgemapsBackbone
from monitor.model.wavlm import WavLMBackbone
from monitor.model.whisper import WhisperBackbone

WAVLM_KINDS = ("wavlm",)
EGEMAPS_KINDS = ("egemaps",)
WHISPER_KINDS = ("whisper",)


def build_backbone(spec: dict[str, Any], bundle_dir: str | Path | None = None) -> Backbone:
    """Rebuild a backbone from its bundle spec.

    A WavLM ``source`` that starts with ``bundle:`` is a folder inside the bundle
    (a fine-tuned or test encoder saved with ``save_pretrained``); anything else
    is a hub id or a local path.
    """
    kind = spec.get("kind")
    if kind in EGEMAPS_KINDS:
        return EgemapsBackbone(spec.get("feature_set", "eGeMAPSv02"))
    if kind in WAVLM_KINDS:
        source = str(spec["source"])
        if source.startswith("bundle:"):
            if bundle_dir is None:
                raise BackboneLoadError(
                    f"backbone source {source!r} is inside a bundle, but no bundle folder was given")
            source = str(Path(bundle_dir) / source[len("bundle:"):])
            if not Path(source).is_dir():
                raise BackboneLoadError(f"the bundle's backbone folder is missing: {source}")
        return WavLMBackbone.from_pretrained(source, revision=spec.get("revision"), finetune="frozen")
    if kind in WHISPER_KINDS:
        backbone = WhisperBackbone.from_pretrained(str(spec.get("source", "")), revision=spec.get("revision"),
                                                   input_mode=str(spec.get("input", "sliced")))
        expected = spec.get("weights_sha256")
        if expected and backbone.weights_sha256 and expected != backbone.weights_sha256:
            raise BackboneLoadError(f"the Whisper weights found have sha256 {backbone.weights_sha256}, but the "
                                    f"bundle was trained on {expected}")
        return backbone
    raise ValueError(f"unknown backbone kind {kind!r}; known: {WAVLM_KINDS + EGEMAPS_KINDS + WHISPER_KINDS}")
