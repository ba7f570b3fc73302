"""Speaker embeddings ("voiceprints"): who is speaking, not how they feel.

One small interface, :class:`SpeakerEncoder`: 16 kHz float32 waveforms in, one
L2-normalised speaker embedding per waveform out. The attribution rule and the
voiceprint value type live in ``calibration.attribution`` (numpy only); this
module only turns audio into vectors, so a better encoder (an ECAPA model a
user has downloaded, say) can replace the default by implementing ``embed``.

The default, :class:`ResemblyzerEncoder`, is Resemblyzer's GE2E d-vector model
(a 3-layer LSTM over 40-band mel frames, 256-d output, Apache-2.0). Its weights
ship inside the ``resemblyzer`` wheel, so it runs offline. We use only that
weight file, never the package's code: the file's sha256 is checked against
:data:`RESEMBLYZER_SHA256` before anything is read, and its tensors are loaded
with ``torch.load(weights_only=True)`` (no arbitrary unpickling on any torch
version). The network and its input features are re-implemented here exactly
as Resemblyzer 0.1.4 computes them (mel power spectrogram with transformers' audio utilities, 1.6 s partial
utterances at 1.3 per second, the mean of their embeddings), so the package's
other dependencies (librosa, its webrtcvad pin) are not needed at run time;
``tests/test_voiceprint.py`` checks the match against the package itself where
it is importable. Unlike the package, every partial utterance of every segment
of a call goes through the LSTM in one batch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from calibration.attribution import Voiceprint
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.datadir import package_file, sha256_of

#: sha256 of ``resemblyzer/pretrained.pt`` in the Resemblyzer 0.1.4 wheel (the only release that ships it this way).
RESEMBLYZER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
RESEMBLYZER_NAME = "resemblyzer-ge2e"


class SpeakerEncoderError(RuntimeError):
    """The speaker encoder's weights are missing, altered or unreadable; the message says which file and why."""


@runtime_checkable
class SpeakerEncoder(Protocol):
    """Turns 16 kHz mono float32 waveforms into L2-normalised speaker embeddings.

    name: a stable id of the model (voiceprints record it; scores across encoders mean nothing).
    version: what exactly produced the vectors (package version, weights hash).
    dim: the embedding size.
    """

    name: str
    version: str
    dim: int

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """[len(waves), dim] float32, each row of unit length (one per waveform, in order)."""
        ...


def voiceprint_of(encoder: SpeakerEncoder, waves: Sequence[np.ndarray], source: str = "") -> Voiceprint:
    """A speaker's voiceprint from their enrolment segments: the duration-weighted mean of the segment embeddings."""
    waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves if np.asarray(w).size > 0]
    if not waves:
        raise SpeakerEncoderError("no speech to take a voiceprint from")
    embeddings = encoder.embed(waves)
    seconds = [len(w) / SAMPLE_RATE for w in waves]
    return Voiceprint.from_embeddings(embeddings, seconds, encoder=encoder.name, encoder_version=encoder.version,
                                      source=source)


# ---- Resemblyzer's GE2E encoder -------------------------------------------------------------------

#: Resemblyzer 0.1.4's hyper-parameters (``resemblyzer/hparams.py``).
MEL_WINDOW = 400            # 25 ms
MEL_HOP = 160               # 10 ms
MEL_BANDS = 40
PARTIAL_FRAMES = 160        # 1.6 s partial utterances
PARTIAL_RATE = 1.3          # partial utterances per second
PARTIAL_MIN_COVERAGE = 0.75
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3
TARGET_DBFS = -30.0
INT16_MAX = 2 ** 15 - 1
VAD_WINDOW_MS = 30
VAD_AVERAGE_WIDTH = 8
VAD_MAX_SILENCE = 6


def resemblyzer_weights_path() -> Path:
    """Where the installed ``resemblyzer`` package keeps ``pretrained.pt``, found without importing the package."""
    try:
        return package_file("resemblyzer", "pretrained.pt")
    except FileNotFoundError as exc:
        raise SpeakerEncoderError(f"the speaker encoder needs the resemblyzer package for its weights ({exc}): "
                                  "pip install --no-deps resemblyzer==0.1.4") from exc


def _resemblyzer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resemblyzer")
    except PackageNotFoundError:  # weights given by path, package absent
        return "unknown"


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """[40, 201] Slaney-normalised triangular filters, as ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)``."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=MEL_WINDOW // 2 + 1, num_mel_filters=MEL_BANDS, min_frequency=0.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")
    return np.ascontiguousarray(bank.T, dtype=np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    """The periodic Hann window of Resemblyzer's STFT (scipy's ``fftbins=True``)."""
    from transformers.audio_utils import window_function

    return np.asarray(window_function(MEL_WINDOW, "hann", periodic=True), dtype=np.float32)


def mel_frames(wave: np.ndarray) -> np.ndarray:
    """[frames, 40] mel power spectrogram (not log), 25 ms windows every 10 ms, centred with zero padding."""
    padded = np.pad(np.asarray(wave, dtype=np.float32), MEL_WINDOW // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_WINDOW)[::MEL_HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=1)) ** 2
    return np.asarray(power.astype(np.float32) @ mel_filterbank().T, dtype=np.float32)


def normalize_volume(wave: np.ndarray) -> np.ndarray:
    """Raise (never lower) the level to -30 dBFS RMS, as Resemblyzer's preprocessing does."""
    rms = float(np.sqrt(np.mean((wave.astype(np.float64) * INT16_MAX) ** 2))) if wave.size else 0.0
    if rms <= 0.0:
        return wave
    change = TARGET_DBFS - 20.0 * np.log10(rms / INT16_MAX)
    return wave if change < 0 else (wave * 10.0 ** (change / 20.0)).astype(np.float32)


def trim_long_silences(wave: np.ndarray) -> np.ndarray:
    """Resemblyzer's VAD trim (webrtcvad mode 3, 30 ms windows, smoothed, dilated): drops pauses longer than ~0.2 s.

    Returns the input unchanged when the VAD finds no voiced window (so a quiet segment is still embedded).
    """
    import webrtcvad
    from scipy.ndimage import binary_dilation

    window = VAD_WINDOW_MS * SAMPLE_RATE // 1000
    wave = wave[: len(wave) - len(wave) % window]
    if wave.size == 0:
        return wave
    pcm = np.round(np.clip(wave, -1.0, 1.0) * INT16_MAX).astype(np.int16)
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(pcm[i:i + window].tobytes(), SAMPLE_RATE) for i in range(0, len(pcm), window)],
                     dtype=np.float64)
    width = VAD_AVERAGE_WIDTH
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
    mask = binary_dilation(np.round(smooth).astype(bool), np.ones(VAD_MAX_SILENCE + 1))
    if not mask.any():
        return wave
    return np.asarray(wave[np.repeat(mask, window)])


def partial_starts(n_samples: int) -> list[int]:
    """First mel frame of each 1.6 s partial utterance (Resemblyzer's ``compute_partial_slices``, same defaults)."""
    n_frames = int(np.ceil((n_samples + 1) / MEL_HOP))
    step = int(np.round((SAMPLE_RATE / PARTIAL_RATE) / MEL_HOP))
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * MEL_HOP) / (PARTIAL_FRAMES * MEL_HOP)
    if coverage < PARTIAL_MIN_COVERAGE and len(starts) > 1:
        starts = starts[:-1]
    return starts


class _GE2E(nn.Module):
    """Resemblyzer's network: LSTM(40 -> 256, 3 layers) -> last hidden state -> linear -> ReLU -> unit length."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_BANDS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        out: torch.Tensor = raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)
        return out


class ResemblyzerEncoder:
    """Resemblyzer's GE2E speaker encoder (256-d), offline, from the weights inside the ``resemblyzer`` wheel.

    device: "cpu" (default), "cuda", "cuda:1", or "auto" (CUDA when present). weights: another
    ``pretrained.pt`` (default: the installed package's); expected_sha256: the hash it must have
    (:data:`RESEMBLYZER_SHA256`; None skips the check, for a user's own fine-tuned copy).
    trim_silence: drop pauses inside a segment before embedding (Resemblyzer's own preprocessing).
    max_batch: partial utterances per LSTM forward.
    """

    name = RESEMBLYZER_NAME
    dim = EMBEDDING

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 expected_sha256: str | None = RESEMBLYZER_SHA256, trim_silence: bool = True, max_batch: int = 128):
        self.trim_silence = trim_silence
        self.max_batch = max(1, int(max_batch))
        path = Path(weights) if weights is not None else resemblyzer_weights_path()
        if not path.is_file():
            raise SpeakerEncoderError(f"speaker encoder weights not found at {path}; "
                                      "pip install --no-deps resemblyzer==0.1.4")
        digest = sha256_of([path])
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise SpeakerEncoderError(
                f"refusing the speaker encoder weights at {path}: sha256 {digest} is not the expected "
                f"{expected_sha256} (resemblyzer 0.1.4's pretrained.pt); reinstall resemblyzer==0.1.4")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint["model_state"] if isinstance(checkpoint, dict) and "model_state" in checkpoint \
                else checkpoint
            network = _GE2E()
            missing, unexpected = network.load_state_dict(state, strict=False)
        except Exception as exc:  # a truncated file, a pickle with code in it, a foreign state dict
            raise SpeakerEncoderError(f"cannot read the speaker encoder weights at {path}: {exc}") from exc
        unexpected = [k for k in unexpected if not k.startswith("similarity_")]  # GE2E's training-loss scalars
        if missing or unexpected:
            raise SpeakerEncoderError(f"{path} is not a GE2E speaker encoder: missing {missing}, "
                                      f"unexpected {unexpected}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._network = network.to(self.device).eval()
        self.weights = path
        self.sha256 = digest
        self.version = f"resemblyzer {_resemblyzer_version()}, weights sha256 {digest[:16]}"
    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        """Resemblyzer's preprocessing of a 16 kHz waveform: level raised to -30 dBFS, long pauses trimmed."""
        wave = normalize_volume(np.asarray(wave, dtype=np.float32).reshape(-1))
        if self.trim_silence:
            trimmed = trim_long_silences(wave)
            wave = trimmed if trimmed.size >= MEL_HOP else wave
        return wave

    def partial_mels(self, wave: np.ndarray) -> np.ndarray:
        """[partials, 160, 40]: the 1.6 s windows of one preprocessed waveform (zero-padded to whole windows)."""
        starts = partial_starts(len(wave))
        needed = (starts[-1] + PARTIAL_FRAMES) * MEL_HOP
        if needed >= len(wave):
            wave = np.pad(wave, (0, needed - len(wave)))
        mel = mel_frames(wave)
        return np.stack([mel[s:s + PARTIAL_FRAMES] for s in starts])

    @torch.inference_mode()
    def embed_partials(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per waveform, the unit embeddings of its 1.6 s partial utterances ([partials, 256] each)."""
        mels = [self.partial_mels(self.preprocess(w)) for w in waves]
        if not mels:
            return []
        stacked = np.concatenate(mels)
        out = np.empty((stacked.shape[0], EMBEDDING), dtype=np.float32)
        for i in range(0, stacked.shape[0], self.max_batch):
            batch = torch.from_numpy(stacked[i:i + self.max_batch]).to(self.device)
            out[i:i + batch.shape[0]] = self._network(batch).float().cpu().numpy()
        bounds = np.cumsum([0] + [m.shape[0] for m in mels])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """[len(waves), 256]: each waveform's mean partial embedding at unit length (Resemblyzer's utterance one)."""
        partials = self.embed_partials(waves)
        if not partials:
            return np.zeros((0, EMBEDDING), dtype=np.float32)
        means = np.stack([p.mean(axis=0) for p in partials])
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return np.asarray(means / np.maximum(norms, 1e-12), dtype=np.float32)
