"""The model bundle: one folder with everything needed to go from audio to (valence, arousal).

Layout (format ``mood-monitor-bundle``, version 1; see docs/bundle.md)::

    bundle.json          what the model is: backbone spec, labels, anchors, head shape,
                         normalisation mode, reducer summary, provenance, metrics
    head.safetensors     head weights (+ the backbone's learnable layer weights)
    normalization.npz    population feature statistics (no pickles)
    reducer.json/.npz    the fitted anchored reducer (Stage II)
    backbone/            optional: a WavLM saved with save_pretrained (fine-tuned or test encoders)

Nothing in a bundle is a pickle: loading one never runs code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from calibration.jsonable import to_jsonable
from calibration.reducer import AnchoredReducer
from calibration.safe_npz import UnsafeArrayFile, read_npz
from calibration.speaker import FeatureNormalizer
from monitor.model.backbones import build_backbone
from monitor.model.base import BackboneLoadError
from monitor.model.bundle_checks import (BundleError, check_head_state, check_inside, check_meta,
                                         check_normalization)
from monitor.model.emotion import EmotionModel, choose_device
from monitor.model.head import EmotionHead
from monitor.model.wavlm import WavLMBackbone

BUNDLE_FORMAT = "mood-monitor-bundle"
BUNDLE_VERSION = 1
BACKBONE_DIR = "backbone"
#: The bundles shipped with the package, by name; "default" is the one the monitor runs without --model.
SHIPPED_BUNDLES = {name: Path(__file__).resolve().parent / "bundles" / name for name in ("whisper", "egemaps")}
DEFAULT_MODEL = "whisper"  # docs/model_card.md; "egemaps" is the light fallback (docs/model_card_egemaps.md)

__all__ = ["BundleError", "ModelBundle", "load_bundle", "load_model", "resolve_bundle"]


def default_bundle_path() -> Path:
    """The bundle shipped with the package as the default (trained on the shared corpora, non-commercial)."""
    return SHIPPED_BUNDLES[DEFAULT_MODEL]


#: A Hugging Face Hub repo id: "owner/name" (and nothing that could be a relative path such as "./x" or "a/b/c").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class HubOptions:
    """How a Hub repo id is fetched (``huggingface_hub.snapshot_download``); ignored for names and folders."""

    revision: str | None = None
    cache_dir: str | None = None
    token: str | bool | None = None


def resolve_bundle(name_or_path: str | os.PathLike[str] | None = None, hub: HubOptions | None = None) -> Path:
    """A shipped bundle's name ("default", "egemaps", ...), a folder, or a Hub repo id -> the bundle's folder.

    A repo id is downloaded into (or, offline, read from) the Hugging Face
    cache; ``HF_HUB_OFFLINE=1`` never touches the network.
    """
    if name_or_path is None or os.fspath(name_or_path) == "default":
        return default_bundle_path()
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_BUNDLES:
        return SHIPPED_BUNDLES[name_or_path]
    path = Path(name_or_path)
    if path.exists() or not _HUB_ID.match(os.fspath(name_or_path)):
        return path
    return _from_hub(os.fspath(name_or_path), hub or HubOptions())


def _from_hub(repo_id: str, hub: HubOptions) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(repo_id, revision=hub.revision, cache_dir=hub.cache_dir, token=hub.token,
                                   local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        raise BundleError(f"model {repo_id!r} is not in the Hugging Face cache"
                          f"{' and HF_HUB_OFFLINE is set' if offline else ' and the Hub cannot be reached'}: {exc}"
                          ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BundleError(f"could not fetch model {repo_id!r} from the Hugging Face Hub: {exc}") from exc
    return Path(str(folder))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(path)
    except UnsafeArrayFile as exc:
        raise BundleError(str(exc)) from exc


@dataclass
class ModelBundle:
    """A model bundle in memory. ``save`` writes it; ``load_bundle`` reads it back."""

    backbone: dict[str, Any]
    labels: list[str]
    anchors: dict[str, tuple[float, float]]
    head_config: dict[str, Any]
    head_state: dict[str, torch.Tensor]
    normalizer: FeatureNormalizer
    reducer: AnchoredReducer | None = None
    anchor_set: str = "custom"
    name: str = "model"
    version: str = "0"
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    encoder: Any = None  # a transformers model to write into backbone/ on save

    @property
    def model_id(self) -> str:
        """Name, version and a short content hash: the exact model a stored point came from.

        The hash covers everything that decides where a point lands: the head
        (and layer weights), the normalisation and the fitted reducer, so a
        bundle re-fitted with other reducer settings gets another id.
        """
        digest = hashlib.sha256()

        def add(prefix: str, arrays: Mapping[str, torch.Tensor | np.ndarray]) -> None:
            for key in sorted(arrays):
                value = arrays[key]
                value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                digest.update(f"{prefix}{key}{value.dtype}{value.shape}".encode())
                digest.update(np.ascontiguousarray(value).tobytes())

        add("", self.head_state)
        add("normalization.", self.normalizer.to_state()[1])
        if self.reducer is not None:
            digest.update(f"reducer{self.reducer.fingerprint()}".encode())
        return f"{self.name}@{self.version}+{digest.hexdigest()[:10]}"

    @classmethod
    def from_model(cls, model: EmotionModel, reducer: AnchoredReducer | None, anchors: dict[str, tuple[float, float]],
                   *, anchor_set: str = "custom", name: str = "model", version: str = "0",
                   provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   embed_backbone: bool = False) -> "ModelBundle":
        """Package a trained ``EmotionModel`` and a fitted reducer.

        ``embed_backbone=True`` stores the encoder's weights inside the bundle
        (needed after fine-tuning, or for an encoder that is not on a hub).
        """
        head = model.head
        head_state = {f"head.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()}
        head_state.update(model.backbone.bundle_state())
        spec = dict(model.backbone.spec())
        encoder = None
        if isinstance(model.backbone, WavLMBackbone):
            spec["normalize_waveform"] = model.backbone.normalize_waveform
            if embed_backbone:
                spec["base_source"] = spec.get("source")
                spec["source"] = f"bundle:{BACKBONE_DIR}"
                encoder = model.backbone.encoder
        return cls(
            backbone=spec, labels=list(model.labels), anchors=dict(anchors), anchor_set=anchor_set,
            head_config=head.config(),
            head_state=head_state, normalizer=model.normalizer, reducer=reducer, name=name, version=version,
            provenance=dict(provenance or {}), metrics=dict(metrics or {}), encoder=encoder,
        )

    # ---- building the runtime model ---------------------------------------------------
    def build_model(self, device: str = "auto", precision: str = "auto") -> EmotionModel:
        """The runtime model on ``device`` (auto: CUDA when present), in eval mode.

        ``precision="int8"`` quantises a transformer backbone's feed-forward
        layers for CPU inference (backbones without it run in fp32).
        """
        backbone = build_backbone(self.backbone, self.path)
        head = EmotionHead(**self.head_config)
        head_state = {k[len("head."):]: v for k, v in self.head_state.items() if k.startswith("head.")}
        try:
            head.load_state_dict(head_state, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"head weights do not match the head described in bundle.json: {exc}") from exc
        try:
            backbone.load_bundle_state(dict(self.head_state))
        except BackboneLoadError as exc:
            raise BundleError(str(exc)) from exc
        model = EmotionModel(backbone, head, self.normalizer, self.labels, precision=precision)
        target = choose_device(device)
        if precision == "int8":
            if target.type != "cpu":
                raise ValueError("int8 precision is for CPU inference; use auto, bf16 or fp16 on a GPU")
            quantize = getattr(model.backbone, "quantize_int8", None)
            if quantize is not None:
                quantize()
        return model.to(target).eval()

    # ---- writing ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        norm_params, _ = self.normalizer.to_state()
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "name": self.name,
            "version": self.version,
            "model_id": self.model_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": self.backbone,
            "labels": list(self.labels),
            "anchor_set": self.anchor_set,
            "anchors": {k: [float(v[0]), float(v[1])] for k, v in self.anchors.items()},
            "head": self.head_config,
            "normalization": norm_params,
            "reducer": self._reducer_summary(),
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    def _reducer_summary(self) -> dict[str, Any] | None:
        if self.reducer is None:
            return None
        params = {k: v for k, v in self.reducer.get_params().items()
                  if isinstance(v, (int, float, str, bool, type(None)))}
        return {"class": type(self.reducer).__name__, "params": params, "files": ["reducer.json", "reducer.npz"]}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the bundle to ``folder`` (created; existing bundle files are replaced)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.backbone.get("kind") == "wavlm" and str(self.backbone.get("source", "")).startswith("bundle:"):
            target = folder / str(self.backbone["source"])[len("bundle:"):]
            if self.encoder is not None:
                self.encoder.save_pretrained(target)
                _save_feature_extractor(target, self.backbone.get("normalize_waveform", True))
            elif (self.path is not None and (self.path / BACKBONE_DIR).is_dir()
                  and self.path.resolve() != folder.resolve()):
                shutil.copytree(self.path / BACKBONE_DIR, target, dirs_exist_ok=True)
            elif not target.is_dir():
                raise BundleError("the bundle's backbone lives inside the bundle, but no encoder was given to save")
        state = {k: v.detach().cpu().contiguous() for k, v in self.head_state.items()}
        save_file(state, str(folder / "head.safetensors"), metadata={"format": BUNDLE_FORMAT})
        _, norm_arrays = self.normalizer.to_state()
        np.savez(folder / "normalization.npz", allow_pickle=False, **norm_arrays)
        if self.reducer is not None:
            self.reducer.save(folder)
        # strict JSON (NaN is not JSON): an undefined metric, e.g. a ratio of two CCCs <= 0, is written as null
        (folder / "bundle.json").write_text(json.dumps(to_jsonable(self.to_json()), indent=2, allow_nan=False) + "\n")
        self.path = folder
        return folder


def _save_feature_extractor(folder: Path, normalize: bool) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    # transformers leaves the feature extractor's constructor unannotated
    extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=16000, do_normalize=bool(normalize), return_attention_mask=True)
    extractor.save_pretrained(folder)


def load_bundle(folder: str | os.PathLike[str] | None = None, *, revision: str | None = None,
                cache_dir: str | None = None, token: str | bool | None = None) -> ModelBundle:
    """Read a bundle: a shipped one by name (default: the shipped default), a folder, or a Hub repo id.

    ``revision``, ``cache_dir`` and ``token`` apply to Hub repo ids. Raises
    ``BundleError`` naming what is wrong.
    """
    folder = resolve_bundle(folder, HubOptions(revision, cache_dir, token))
    if not folder.exists():
        raise BundleError(f"model bundle not found: {folder} "
                          "(give --model a bundle folder, or leave it out for the default model)")
    if folder.is_file() and folder.name == "bundle.json":
        folder = folder.parent
    meta_path = folder / "bundle.json"
    meta = _read_meta(folder, meta_path)
    head_state = _read_head(folder)
    normalizer = _read_normalizer(folder, meta)
    reducer = _read_reducer(folder) if meta.get("reducer") else None
    source = meta["backbone"].get("source")
    if isinstance(source, str) and source.startswith("bundle:"):
        check_inside(folder, source)
    _check_head_fits(meta["head"], head_state, folder / "head.safetensors")
    if reducer is not None and reducer.n_features_in_ != meta["head"]["embedding_dim"]:
        raise BundleError(f"{folder}: the reducer takes {reducer.n_features_in_}-d embeddings, the head gives "
                          f"{meta['head']['embedding_dim']}")
    try:
        bundle = ModelBundle(
            backbone=dict(meta["backbone"]),
            labels=list(meta["labels"]),
            anchors={k: (float(v[0]), float(v[1])) for k, v in meta["anchors"].items()},
            head_config=dict(meta["head"]),
            head_state=head_state,
            normalizer=normalizer,
            reducer=reducer,
            anchor_set=str(meta.get("anchor_set", "custom")),
            name=str(meta.get("name", folder.name)),
            version=str(meta.get("version", "0")),
            provenance=dict(meta.get("provenance", {})),
            metrics=dict(meta.get("metrics", {})),
            path=folder,
        )
    except KeyError as exc:
        raise BundleError(f"{meta_path} lacks the field {exc}") from exc
    return bundle


def _read_meta(folder: Path, meta_path: Path) -> dict[str, Any]:
    """bundle.json, checked to be a bundle this program can read."""
    if not meta_path.is_file():
        raise BundleError(f"{folder} is not a model bundle: it has no bundle.json")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path} is not a {BUNDLE_FORMAT} file (format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > BUNDLE_VERSION:
        raise BundleError(
            f"{folder} uses bundle format {meta['format_version']}, newer than this program reads "
            f"({BUNDLE_VERSION}); upgrade mood-monitor"
        )
    check_meta(meta, meta_path)
    return meta


def _check_head_fits(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> None:
    """The head weights have exactly the shapes bundle.json describes (found now, not on every segment)."""
    check_head_state(state, path)
    try:
        head = EmotionHead(**config)
        head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise BundleError(f"{path}: head weights do not match the head described in bundle.json: {exc}") from exc


def _read_head(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    head_path = folder / "head.safetensors"
    if not head_path.is_file():
        raise BundleError(f"model bundle {folder} is missing head.safetensors")
    try:
        return load_file(str(head_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{head_path} is corrupt or unreadable: {exc}") from exc


def _read_normalizer(folder: Path, meta: Mapping[str, Any]) -> FeatureNormalizer:
    norm_path = folder / "normalization.npz"
    norm_arrays = _read_npz(norm_path) if norm_path.is_file() else {}
    check_normalization(norm_arrays, int(meta["head"]["input_dim"]), norm_path)
    try:
        return FeatureNormalizer.from_state(meta.get("normalization", {"mode": "none"}), norm_arrays)
    except (ValueError, KeyError) as exc:
        raise BundleError(f"{folder}: normalisation state is incomplete: {exc}") from exc


def _read_reducer(folder: Path) -> AnchoredReducer:
    try:
        return AnchoredReducer.load(folder)
    except FileNotFoundError as exc:
        raise BundleError(f"model bundle {folder} names a reducer but its file is missing: {exc}") from exc
    except Exception as exc:
        raise BundleError(f"the reducer in {folder} is unreadable: {exc}") from exc


def load_model(name_or_path: str | os.PathLike[str] | None = None, device: str = "auto",
               precision: str = "auto") -> tuple[ModelBundle, EmotionModel]:
    """The one way to get a runnable model: the bundle (for its reducer, labels and id) and its model."""
    bundle = load_bundle(name_or_path)
    return bundle, bundle.build_model(device=device, precision=precision)
