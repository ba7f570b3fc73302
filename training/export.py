"""Export: 100-d embeddings to .npz for the reducer, reducer fitting, and the model bundle.

``export_embeddings`` writes ``embeddings.npz`` (embeddings, probabilities,
labels, speakers, corpus, split, keys, intensity, sentence; all plain arrays,
``allow_pickle=False`` readable, so ``python -m calibration.evaluate`` can run
the intensity check on it). ``fit_reducer`` fits ``calibration.reducer.AnchoredReducer`` on
them. ``make_bundle`` assembles a ``monitor.model.bundle.ModelBundle`` (head +
fitted reducer + normalisation + metrics + provenance).
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import torch

    from calibration.reducer import AnchoredReducer
    from calibration.speaker import FeatureNormalizer
    from monitor.model.bundle import ModelBundle
    from monitor.model.head import EmotionHead
    from training.corpora import Manifest

#: Licence of each corpus this project knows (for provenance and the model card).
CORPUS_LICENCES = {
    "ravdess": "CC BY-NC-SA 4.0 (Livingstone & Russo 2018)",
    "emovo": "research use only, non-commercial (Costantini et al. 2014)",
    "jl": "CC0 (James, Tian & Watson 2018)",
    "emodb": "free for research (Burkhardt et al. 2005)",
    "cremad": "Open Database License (ODbL) (Cao et al. 2014)",
    "iemocap": "USC licence: research use only, no redistribution (Busso et al. 2008)",
    "mead": "research use only (Wang et al. 2020)",
}
#: Base reducer settings: the reducer's own defaults, seeded. ``python -m training build`` adds its
#: ``--reducer-*`` flags (the shipped model: ``fast_neighbors=40``, no alignment; docs/model_card.md).
REDUCER_DEFAULTS: dict[str, Any] = {"align": None, "random_state": 0}


def export_embeddings(path: str | Path, embeddings: np.ndarray, manifest: Manifest,
                      probabilities: np.ndarray | None = None, class_labels: Sequence[str] | None = None) -> Path:
    """Write embeddings with their labels, speakers, corpus and split (no file paths, no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "embeddings": np.asarray(embeddings, dtype=np.float32),
        "labels": manifest.labels.astype(str),
        "speakers": manifest.speakers.astype(str),
        "corpus": manifest.corpora.astype(str),
        "split": manifest.splits.astype(str),
        "keys": manifest.keys.astype(str),
        "intensity": manifest.column("intensity").astype(str),
        "sentence": manifest.column("sentence").astype(str),  # with speaker + intensity: the intensity check
        "valence": manifest.column("valence"),
        "arousal": manifest.column("arousal"),
        "dominance": manifest.column("dominance"),
    }
    if probabilities is not None:
        arrays["probabilities"] = np.asarray(probabilities, dtype=np.float32)
        arrays["classes"] = np.asarray(list(class_labels or []), dtype=str)
    np.savez_compressed(path, **arrays)
    return path


def fit_reducer(embeddings: ArrayLike, labels: ArrayLike, anchors: Any = "all", X_align: ArrayLike | None = None,
                y_align: ArrayLike | None = None, **params: Any) -> AnchoredReducer:
    """Fit the Stage II ``AnchoredReducer`` on embeddings with canonical labels.

    ``X_align``/``y_align``: held-out embeddings (the early-stopping speakers') on which an ``align``
    map is fitted (``AnchoredReducer.fit``); ignored without ``align``.
    """
    from calibration.reducer import AnchoredReducer

    settings = {**REDUCER_DEFAULTS, **params}
    reducer = AnchoredReducer(anchors=anchors, **settings)
    if settings.get("align") and X_align is not None and len(np.asarray(X_align)):
        return reducer.fit(np.asarray(embeddings, dtype=np.float32), np.asarray(labels),
                           X_align=np.asarray(X_align, dtype=np.float32), y_align=np.asarray(y_align))
    return reducer.fit(np.asarray(embeddings, dtype=np.float32), np.asarray(labels))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def provenance(manifest: Manifest, config: dict[str, Any], command: Sequence[str] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the model was trained on and how (no machine paths)."""
    import torch

    corpora = sorted(set(manifest.corpora.tolist()))
    return {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpora": {c: {"clips": int((manifest.corpora == c).sum()),
                        "speakers": int(len(set(manifest.speakers[manifest.corpora == c].tolist()))),
                        "licence": CORPUS_LICENCES.get(c, "see the corpus")} for c in corpora},
        "labels": {k: int(v) for k, v in zip(*np.unique(manifest.labels, return_counts=True), strict=True)},
        "licence_note": "non-commercial: trained on data licensed for non-commercial / research use only"
        if any(c in corpora for c in ("ravdess", "emovo", "iemocap", "mead")) else "see the corpus licences",
        "config": config,
        "command": " ".join(command) if command else "",
        "code_commit": git_commit(),
        "software": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        **(extra or {}),
    }


def make_bundle(*, backbone_spec: dict[str, Any], labels: Sequence[str], head: EmotionHead,
                normalizer: FeatureNormalizer, reducer: AnchoredReducer | None = None, anchor_set: str = "all",
                name: str = "model", version: str = "1",
                provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                backbone_state: dict[str, torch.Tensor] | None = None, encoder: Any = None) -> ModelBundle:
    """A ``monitor.model.bundle.ModelBundle`` from trained parts.

    ``backbone_state``: what training learnt inside the backbone (``Backbone.bundle_state()``: layer
    weights and statistics); ``encoder``: a transformers model to save inside the bundle.
    """
    from calibration.anchors import get_anchor_set
    from monitor.model.bundle import ModelBundle

    head_state = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    for key, value in (backbone_state or {}).items():
        head_state[key] = value.detach().cpu().float().contiguous()
    head_config = head.config()
    table = get_anchor_set(anchor_set)
    anchors = {c: table.anchor(c) if c in table.anchors else get_anchor_set("all").anchor(c) for c in labels}
    return ModelBundle(backbone=dict(backbone_spec), labels=list(labels), anchors=anchors, head_config=head_config,
                       head_state=head_state, normalizer=normalizer, reducer=reducer, anchor_set=anchor_set, name=name,
                       version=version, provenance=provenance or {}, metrics=metrics or {}, encoder=encoder)
