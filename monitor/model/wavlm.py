"""WavLM (and wav2vec2 / HuBERT) as a backbone: the method's self-supervised encoder.

Loaded with ``from_pretrained`` from a hub id or a local folder, with learnable
softmax weights over all hidden layers and mean pooling over the frames that
hold real audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from monitor.model.base import Backbone, BackboneLoadError

FINETUNE_MODES = ("frozen", "transformer")


class SpeechEncoder(Protocol):
    """What the backbone uses of a transformers speech model (``WavLMModel``, ``Wav2Vec2Model``, ``HubertModel``).

    The encoder is also an ``nn.Module`` (a submodule of the backbone). Its
    ``config`` is the model's transformers config, whose sizes are plain
    attributes that differ per architecture.
    """

    config: Any

    def __call__(self, input_values: torch.Tensor, *, attention_mask: torch.Tensor | None,
                 output_hidden_states: bool, return_dict: bool) -> Any: ...

    def _get_feat_extract_output_lengths(self, input_lengths: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self) -> Any: ...


def _load_pretrained(source: str, revision: str | None) -> tuple[SpeechEncoder, bool]:
    """The speech model at ``source`` and whether its feature extractor normalises waveforms."""
    from transformers import AutoFeatureExtractor, AutoModel

    try:
        model = AutoModel.from_pretrained(source, revision=revision)
    except (OSError, ValueError, EnvironmentError) as exc:
        where = f"local folder {source!r}" if Path(source).exists() else f"hub id {source!r}"
        raise BackboneLoadError(
            f"could not load the speech backbone from {where}: {exc}. "
            "Give --model a bundle whose backbone is a readable WavLM folder, or a hub id with internet access."
        ) from exc
    except Exception as exc:  # corrupt safetensors, truncated files, ...
        raise BackboneLoadError(f"the speech backbone at {source!r} is unreadable or corrupt: {exc}") from exc
    try:
        # transformers leaves AutoFeatureExtractor.from_pretrained unannotated
        extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)  # type: ignore[no-untyped-call]
        normalize = bool(getattr(extractor, "do_normalize", True))
    except (OSError, ValueError):
        normalize = True
    return model, normalize


class WavLMBackbone(Backbone):
    """A self-supervised speech model with learnable weights over its hidden layers.

    The pooled feature is ``sum_l softmax(w)_l * mean_t(h_l[t])`` over the frames
    that hold real audio, counted by the model's own convolution arithmetic.
    """

    kind = "wavlm"

    def __init__(self, encoder: SpeechEncoder, normalize_waveform: bool = True, finetune: str = "frozen",
                 source: str = "", revision: str | None = None):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        self.encoder = encoder
        self.source = source
        self.revision = revision
        self.normalize_waveform = normalize_waveform
        config = encoder.config
        self.feature_dim = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers) + 1  # + the CNN/projection output
        self.layer_logits = nn.Parameter(torch.zeros(self.num_layers))
        # LayerDrop would skip layers while fine-tuning; the layer weights need every layer's output.
        if hasattr(config, "layerdrop"):
            config.layerdrop = 0.0
        # Group-normalised feature encoders (the Base models) see padding as signal, so
        # only layer-normalised ones get padded batches; others run one length at a time.
        self.pads_safely = getattr(config, "feat_extract_norm", "layer") == "layer"
        self.set_finetune(finetune)

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None,
                        finetune: str = "frozen") -> "WavLMBackbone":
        source = str(source)
        model, normalize = _load_pretrained(source, revision)
        return cls(model, normalize_waveform=normalize, finetune=finetune, source=source, revision=revision)

    def set_finetune(self, finetune: str) -> None:
        """frozen: only the layer weights learn; transformer: the CNN encoder stays frozen, the rest learns."""
        self.finetune = finetune
        for p in self.encoder.parameters():
            p.requires_grad = finetune == "transformer"
        if finetune == "transformer":
            feature_encoder = getattr(self.encoder, "feature_extractor", None)
            if feature_encoder is not None:
                for p in feature_encoder.parameters():
                    p.requires_grad = False
        self.train(self.training)

    def train(self, mode: bool = True) -> "WavLMBackbone":
        """A frozen encoder stays in eval mode (no dropout) even while the layer weights train."""
        super().train(mode)
        if self.finetune == "frozen":
            self.encoder.eval()
        return self

    def quantize_int8(self) -> None:
        """Dynamic int8 weights for the transformer's feed-forward layers (CPU inference only).

        The feed-forward blocks hold most of the transformer's arithmetic; the
        attention projections are left alone because WavLM's attention reads
        their weights directly.
        """
        import warnings

        from torch.ao.quantization import quantize_dynamic

        layers = getattr(getattr(self.encoder, "encoder", None), "layers", None)
        if layers is None:
            raise ValueError(f"int8 needs a transformer with encoder.layers; {type(self.encoder).__name__} has none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for layer in layers:
                # torch leaves quantize_dynamic unannotated
                layer.feed_forward = quantize_dynamic(  # type: ignore[no-untyped-call]
                    layer.feed_forward, {nn.Linear}, dtype=torch.qint8)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def bundle_state(self) -> dict[str, torch.Tensor]:
        return {"backbone.layer_logits": self.layer_logits.detach().cpu().clone()}

    def load_bundle_state(self, state: dict[str, torch.Tensor]) -> None:
        logits = state.get("backbone.layer_logits")
        if logits is None or logits.shape != self.layer_logits.shape:
            raise BackboneLoadError(f"bundle has no layer weights for a {self.num_layers}-layer backbone "
                                    f"(found {None if logits is None else tuple(logits.shape)})")
        with torch.no_grad():
            self.layer_logits.copy_(logits)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames per input, from the model's own convolution arithmetic."""
        frames: torch.Tensor = self.encoder._get_feat_extract_output_lengths(sample_lengths).long()
        return frames

    def prepare(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (and per-utterance normalise, as the checkpoint's feature extractor does) into a batch."""
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, wave in enumerate(waves):
            x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
            if self.normalize_waveform:
                x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
            batch[i, : len(x)] = x
        return batch, lengths

    def forward_padded(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled features for a padded batch [B, T] with true sample lengths [B].

        Every caller (the live worker, training, export) comes through here, so
        a model whose group norm would see the padding (``pads_safely`` False)
        runs one forward per distinct length, each on its unpadded samples.
        """
        lengths = lengths.to(input_values.device)
        if self.pads_safely:
            return self._forward_batch(input_values, lengths)
        groups = [(torch.nonzero(lengths == n).squeeze(1), int(n)) for n in torch.unique(lengths).tolist()]
        if len(groups) == 1:
            return self._forward_batch(input_values[:, : groups[0][1]], lengths)
        parts = [(idx, self._forward_batch(input_values[idx, :n], lengths[idx])) for idx, n in groups]
        out = torch.empty(len(lengths), parts[0][1].shape[1], device=parts[0][1].device, dtype=parts[0][1].dtype)
        for idx, features in parts:
            out[idx] = features
        return out

    def _forward_batch(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        attention_mask = None
        if self.pads_safely and bool((lengths < input_values.shape[1]).any()):
            positions = torch.arange(input_values.shape[1], device=input_values.device)
            attention_mask = (positions[None, :] < lengths[:, None]).long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune != "frozen"):
            out = self.encoder(input_values, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        hidden = torch.stack(out.hidden_states, dim=0)  # [L, B, F, H]
        frames = self.frame_lengths(lengths).clamp(min=1, max=hidden.shape[2])
        mask = (torch.arange(hidden.shape[2], device=hidden.device)[None, :] < frames[:, None]).to(hidden.dtype)
        pooled = (hidden * mask[None, :, :, None]).sum(dim=2) / frames[None, :, None].to(hidden.dtype)  # [L, B, H]
        weights = self.layer_weights().to(pooled.dtype)
        return torch.einsum("l,lbh->bh", weights, pooled).float()

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        if not len(waves):
            return torch.zeros(0, self.feature_dim, device=self.device)
        batch, lengths = self.prepare(waves)
        return self.forward_padded(batch.to(self.device), lengths)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "revision": self.revision,
            "finetune": self.finetune,
            "feature_dim": self.feature_dim,
            "num_layers": self.num_layers,
            "architecture": type(self.encoder).__name__,
        }
