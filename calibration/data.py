"""Exported-embedding files (.npz) and corpus file-name labels.

The exchange format between Stage I and Stage II is one ``.npz`` written with
``np.savez`` and read with ``allow_pickle=False``, so strings must be stored as
fixed-width unicode arrays (never object arrays). Keys:

required
    embeddings [n, d] float32, labels [n] str (canonical emotion names),
    speakers [n] str, split [n] str in {train, val, test}
optional
    corpus (scalar or [n] str), valence / arousal [n] float in [-1, 1] (NaN
    where unknown), intensity [n] str ("normal" / "strong" or a number),
    sentence [n] str, pred [n] str (the head's predicted label), or
    probs (or probabilities) [n, C] float with classes [C] str (the head's
    class probabilities); other keys (e.g. keys, dominance) are carried along
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

from calibration.anchors import canonical_emotion

REQUIRED = ("embeddings", "labels", "speakers", "split")
PER_ROW_OPTIONAL = ("valence", "arousal", "intensity", "sentence", "pred", "probs", "corpus")
SPLITS = ("train", "val", "test")


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check an exported-embedding file; labels come back canonical."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(f"{path}: cannot read without pickle ({e}); store strings as fixed-width "
                         "unicode, e.g. np.asarray(list_of_str, dtype=str)") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise KeyError(f"{path}: missing key(s) {missing}; required: {list(REQUIRED)}")
    return check_embeddings(data, source=str(path))


def check_embeddings(data: Mapping[str, ArrayLike], source: str = "embeddings") -> dict[str, np.ndarray]:
    """Shapes and vocabulary of an in-memory exported-embedding dict."""
    out = {k: np.asarray(v) for k, v in data.items()}
    if "probabilities" in out and "probs" not in out:  # the training exporter's name
        out["probs"] = out["probabilities"]
    emb = out["embeddings"]
    if emb.ndim != 2:
        raise ValueError(f"{source}: embeddings must be [n, d], got {emb.shape}")
    out["embeddings"] = emb.astype(np.float32, copy=False)
    _check_rows(out, emb.shape[0], source)
    out["labels"] = _canonical(out["labels"])
    out["speakers"] = out["speakers"].astype(str)
    out["split"] = np.char.lower(out["split"].astype(str))
    bad = sorted(set(out["split"].tolist()) - set(SPLITS))
    if bad:
        raise ValueError(f"{source}: unknown split value(s) {bad}; use {list(SPLITS)}")
    for key in ("valence", "arousal"):
        if key in out:
            out[key] = _as_float(out[key])
    if "pred" in out:
        out["pred"] = _canonical(out["pred"])
    if "probs" in out:
        if "classes" not in out or out["probs"].ndim != 2 or out["probs"].shape[1] != len(out["classes"]):
            raise ValueError(f"{source}: probs [n, C] needs classes [C]")
        out["classes"] = _canonical(out["classes"])
    return out


def _check_rows(data: Mapping[str, np.ndarray], n: int, source: str) -> None:
    """Every per-row key has ``n`` rows (a scalar corpus name is allowed)."""
    for key in list(REQUIRED[1:]) + [k for k in PER_ROW_OPTIONAL if k in data]:
        if key == "corpus" and data[key].ndim == 0:
            continue
        if data[key].shape[0] != n:
            raise ValueError(f"{source}: {key!r} has {data[key].shape[0]} rows, embeddings have {n}")


def _canonical(values: np.ndarray) -> np.ndarray:
    """Emotion labels mapped onto the canonical vocabulary, as a unicode array."""
    return np.asarray([canonical_emotion(str(v)) for v in values], dtype=str)


def _as_float(values: np.ndarray) -> np.ndarray:
    """Numbers as float64, with '' / unparsable strings as NaN (unknown)."""
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    out = np.full(values.shape, np.nan)
    for i, v in enumerate(values.astype(str)):
        try:
            out[i] = float(v)
        except ValueError:
            pass
    return out


def select_split(data: Mapping[str, np.ndarray], split: str | None) -> dict[str, np.ndarray]:
    """Rows of one split (``None`` or "all": every row); scalar entries pass through."""
    if split in (None, "all"):
        return dict(data)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or 'all', got {split!r}")
    mask = data["split"] == split
    if not mask.any():
        raise ValueError(f"no rows with split == {split!r}")
    n = data["embeddings"].shape[0]
    return {k: (v[mask] if v.ndim >= 1 and v.shape[0] == n and k != "classes" else v) for k, v in data.items()}


def head_predictions(data: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The head's predicted labels: ``pred`` as given, else argmax of ``probs``."""
    if "pred" in data:
        return np.asarray(data["pred"], dtype=str)
    if "probs" in data:
        predicted: np.ndarray = np.asarray(data["classes"], dtype=str)[np.argmax(data["probs"], axis=1)]
        return predicted
    return None


def save_embeddings(path: str | Path, **arrays: ArrayLike) -> Path:
    """Write an exported-embedding file with pickle-free string arrays."""
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype == object:
            a = a.astype(str)
        out[k] = a
    check_embeddings(out, source=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, allow_pickle=False, **out)
    return path


#: RAVDESS file names: MM-VV-EE-II-SS-RR-AA (see the corpus' SOURCE.md).
RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}


def parse_ravdess_name(path: str | Path) -> dict[str, str]:
    """Label, intensity, sentence and speaker encoded in a RAVDESS file name."""
    fields = Path(path).stem.split("-")
    if len(fields) != 7 or fields[2] not in RAVDESS_EMOTIONS or fields[3] not in RAVDESS_INTENSITY:
        raise ValueError(f"not a RAVDESS file name: {Path(path).name}")
    return {
        "label": RAVDESS_EMOTIONS[fields[2]],
        "intensity": RAVDESS_INTENSITY[fields[3]],
        "sentence": fields[4],
        "speaker": f"actor{fields[6]}",
    }
