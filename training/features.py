"""Pooled-feature extraction with an on-disk cache.

Audio is read by the live monitor's own reader (``monitor.audio.io.read_audio``:
any rate, any channel count, repaired NaN/inf and clipping), so training sees
what the monitor sees. ``extract`` computes one feature vector
per manifest item with a featurizer (openSMILE functionals or any
``monitor.model.base.Backbone``) and caches the results in ``.npz`` files
(``allow_pickle=False``) keyed by clip, file size and augmentation, so a second
run is free. Files that fail to load are reported and returned in ``failed``;
the caller drops them (never silently: the trainer logs them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from monitor.audio.io import read_audio, to_int16
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.base import Backbone
from monitor.model.egemaps import EgemapsBackbone
from monitor.model.whisper import WhisperBackbone
from training.augment import Augmentation
from training.corpora import Item, Manifest
from training.settings import Settings

log = logging.getLogger(__name__)

#: Bump when the audio reading or the features change: cached entries of older versions are recomputed.
CACHE_VERSION = 3
DEFAULT_CACHE = Path(".cache") / "features"


def trim_silence(wave: np.ndarray, top_db: float = 35.0, frame: int = 400, hop: int = 160,
                 pad_s: float = 0.1) -> np.ndarray:
    """Cut leading/trailing frames more than ``top_db`` below the loudest frame (keeps ``pad_s`` either side),
    roughly what a voice-activity segmenter hands the model at run time."""
    if len(wave) < frame:
        return wave
    n = 1 + (len(wave) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    energy = 10 * np.log10(np.mean(wave[idx].astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(energy > energy.max() - top_db)
    if active.size == 0:
        return wave
    pad = int(pad_s * SAMPLE_RATE)
    start = max(0, active[0] * hop - pad)
    end = min(len(wave), active[-1] * hop + frame + pad)
    return wave[start:end]


class BackboneFeaturizer:
    """Wraps a ``monitor.model.base.Backbone`` (its ``features`` method) as a featurizer."""

    def __init__(self, backbone: Backbone, name: str | None = None, batch_size: int = 8):
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        self.batch_size = batch_size
        spec = backbone.spec() if hasattr(backbone, "spec") else {}
        self._name = name or "_".join(str(spec.get(k, "")) for k in ("kind", "feature_set", "source") if spec.get(k))

    @property
    def name(self) -> str:
        return self._name.replace("/", "-")

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(waves), self.batch_size):
            with torch.no_grad():
                feats = self.backbone.features(list(waves[i:i + self.batch_size]))
            out.append(feats.detach().float().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats))
        return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros((0, self.feature_dim), np.float32)


class LayerFeaturizer:
    """A layer-weighted backbone's pooled features *per layer* (``[n, layers * d]``, flattened for the cache).

    The layer weights are fitted later, on these (``training.layermix``); the
    backbone's ``layer_features`` is the very code the runtime runs before mixing.
    """

    def __init__(self, backbone: WhisperBackbone):
        self.backbone = backbone
        self.layers = int(backbone.num_layers)
        self.feature_dim = self.layers * int(backbone.feature_dim)
        spec = backbone.spec()
        self.name = f"whisper-{str(spec['weights_sha256'] or spec['source'])[:12]}-{spec['input']}-layers"

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            feats = self.backbone.layer_features(list(waves))
        return np.asarray(feats.reshape(len(waves), -1).cpu().numpy(), dtype=np.float32)


def make_featurizer(feature_set: str = "eGeMAPSv02", backbone: str = "egemaps",
                    whisper_source: str = "package:whisper-base", whisper_input: str = "sliced"
                    ) -> BackboneFeaturizer | LayerFeaturizer:
    """The featurizer the runtime's backbone implies, so training and runtime features come from the same code:
    the project's one openSMILE wrapper (``EgemapsBackbone``) for ``feature_set``, or Whisper's layers."""
    if backbone == "whisper":
        return LayerFeaturizer(WhisperBackbone.from_pretrained(whisper_source, input_mode=whisper_input))
    return BackboneFeaturizer(EgemapsBackbone(feature_set=feature_set), name=feature_set)


@dataclass
class FeatureTable:
    """Features aligned with a manifest (failed items removed)."""

    X: np.ndarray
    manifest: Manifest
    failed: list[tuple[str, str]]
    name: str


def _entry_id(item: Item, extra: str) -> str:
    try:
        size = os.path.getsize(item.path)
    except OSError:
        size = -1
    span = f"|{item.start:.4f}-{item.end:.4f}" if item.is_segment else ""
    return hashlib.sha1(f"{item.key}{span}|{size}|{extra}|v{CACHE_VERSION}".encode()).hexdigest()[:20]


class FeatureCache:
    """``.npz`` per (featurizer, variant) holding ``ids`` (str) and ``X`` (float32); no pickle."""

    def __init__(self, root: str | Path = DEFAULT_CACHE):
        self.root = Path(root)

    def _file(self, name: str, variant: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.+@" else "_" for c in f"{name}__{variant}")
        return self.root / f"{safe}.npz"

    def load(self, name: str, variant: str) -> dict[str, np.ndarray]:
        path = self._file(name, variant)
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as data:
            return dict(zip(data["ids"].tolist(), data["X"], strict=True))

    def save(self, name: str, variant: str, table: dict[str, np.ndarray]) -> None:
        path = self._file(name, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = np.asarray(list(table), dtype=str)
        X = np.stack([table[i] for i in table]).astype(np.float32) if table else np.zeros((0, 0), np.float32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=ids, X=X)
        os.replace(tmp, path)


#: ``featurizer([wave, ...]) -> [n, d]``: one pooled feature vector per 16 kHz waveform.
Featurizer = Callable[[Sequence[np.ndarray]], np.ndarray]


class _ClipReader:
    """Audio of manifest items: a whole clip, or a segment of it exactly as the live VAD hands it on.

    Segments come as the monitor's frames carry them (int16), and the clip read
    last is kept, since a clip's segments follow each other in a manifest.
    """

    def __init__(self) -> None:
        self._path: str | None = None
        self._wave = np.zeros(0, dtype=np.float32)

    def __call__(self, item: Item) -> np.ndarray:
        if item.path != self._path:
            self._wave, self._path = read_audio(item.path), item.path
        if not item.is_segment:
            return self._wave
        start, end = int(round(item.start * SAMPLE_RATE)), int(round(item.end * SAMPLE_RATE))
        span = np.zeros(end - start, dtype=np.float32)  # a segment ending in the last, partial frame: zero-padded
        piece = self._wave[start:end]
        span[: len(piece)] = piece
        return to_int16(span).astype(np.float32) / 32768.0


def extract(manifest: Manifest, featurizer: Featurizer | None = None, *, feature_set: str = "eGeMAPSv02",
            augmentation: Augmentation | None = None, trim: bool = False,
            cache: FeatureCache | str | Path | None = DEFAULT_CACHE, progress: bool = True,
            save_every: int = 200) -> FeatureTable:
    """Features for every item of ``manifest`` (cached). Items whose audio fails to load are reported in ``failed``."""
    from tqdm.auto import tqdm

    featurizer = featurizer or make_featurizer(feature_set)
    name = getattr(featurizer, "name", feature_set)
    variant = (augmentation.name if augmentation else "clean") + ("+trim" if trim else "")
    store = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
    table = store.load(name, variant) if store else {}
    ids = [_entry_id(item, variant) for item in manifest]
    todo = [i for i, eid in enumerate(ids) if eid not in table]
    failed: list[tuple[str, str]] = []
    bad: set[int] = set()
    if todo:
        bar = tqdm(todo, desc=f"features {name} [{variant}]", disable=not progress, unit="item")
        audio = _ClipReader()
        for n, i in enumerate(bar, 1):
            item = manifest[i]
            try:
                wave = audio(item)
                if trim:
                    wave = trim_silence(wave)
                if augmentation is not None:
                    wave = augmentation(wave, item.key)
                if len(wave) < SAMPLE_RATE // 10:
                    raise ValueError("shorter than 0.1 s")
                vec = featurizer([wave])[0]
                if not np.all(np.isfinite(vec)):
                    raise ValueError("non-finite features")
                table[ids[i]] = vec.astype(np.float32)
            except Exception as exc:  # reported, never silent
                failed.append((item.path, f"{type(exc).__name__}: {str(exc)[:160]}"))
                bad.add(i)
            if store and n % save_every == 0:
                store.save(name, variant, table)
        if store:
            store.save(name, variant, table)
    for path, reason in failed:
        log.warning("skipped %s: %s", path, reason)
    keep = [i for i in range(len(manifest)) if i not in bad]
    dim = getattr(featurizer, "feature_dim", None) or (len(next(iter(table.values()))) if table else 0)
    X = np.stack([table[ids[i]] for i in keep]).astype(np.float32) if keep else np.zeros((0, dim), np.float32)
    kept = Manifest([manifest[i] for i in keep], list(manifest.skipped) + [(p, "load failed: " + r) for p, r in failed])
    return FeatureTable(X=X, manifest=kept, failed=failed, name=name)


def feature_matrices(manifest: Manifest, settings: Settings, cache: FeatureCache | str | Path | None = DEFAULT_CACHE,
                     progress: bool = True) -> tuple[np.ndarray, Manifest, list[np.ndarray]]:
    """(features float64, the manifest of the items that loaded, one array per augmentation).

    What every head fit reads (``build``, ``evaluate``, ``experiment``, ``ablate``): the clean
    features, plus a copy of every item per ``settings.augment`` entry (e.g. ``"room"``), all
    extracted through the cache. With ``units="segments"`` the items are the live VAD's speech
    segments of every clip (``training.segments``); ``trim`` cuts a whole clip's leading/trailing
    silence first. Features are ``[n, d]``, or ``[n, layers, d]`` for a layer-weighted backbone
    (the layer weights are fitted with the head, ``training.layermix``).
    """
    if settings.units == "segments":
        from training.segments import segment_manifest

        manifest = segment_manifest(manifest, cache=Path(cache) if isinstance(cache, (str, Path)) else None,
                                    progress=progress)
    featurizer = make_featurizer(settings.feature_set, settings.backbone, settings.whisper_source,
                                 settings.whisper_input)
    table = extract(manifest, featurizer, trim=settings.trim, cache=cache, progress=progress)
    X_aug = []
    for spec in settings.augment:
        t = extract(table.manifest, featurizer, augmentation=Augmentation.from_spec(spec), trim=settings.trim,
                    cache=cache, progress=progress)
        if not np.array_equal(t.manifest.keys, table.manifest.keys):
            raise RuntimeError(f"augmentation {spec} failed on {len(t.failed)} items: {t.failed[:3]}")
        X_aug.append(t.X.astype(np.float64))
    shape = (-1, featurizer.layers, featurizer.feature_dim // featurizer.layers) \
        if isinstance(featurizer, LayerFeaturizer) else (-1, table.X.shape[1])
    return (table.X.astype(np.float64).reshape(shape), table.manifest, [x.reshape(shape) for x in X_aug])
