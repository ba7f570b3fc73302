"""Score a model bundle on a folder of audio: ``python -m training score``.

The Stage II metrics live in ``calibration.evaluate``; this module runs the
Stage I model over audio first, which is why it sits above the live app.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibration.data import check_embeddings, parse_ravdess_name
from monitor.audio.io import read_audio
from monitor.model.bundle import load_model

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _read_manifest(path: Path, root: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{path}: manifest needs a header with at least 'path' and 'label'")
    for r in rows:
        p = Path(r["path"])
        r["path"] = str(p if p.is_absolute() else root / p)
    return rows


def _audio_rows(folder: Path, manifest: Path | None) -> list[dict[str, str]]:
    """One dict per file: path, label and whatever else is known (speaker, sentence, ...)."""
    if manifest is not None:
        return _read_manifest(manifest, folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    try:
        return [{"path": str(p), **parse_ravdess_name(p)} for p in files]
    except ValueError as e:
        raise ValueError(f"{e}; for other corpora pass --manifest with path,label[,speaker,sentence,"
                         "intensity,valence,arousal] columns") from None


def embed_audio_folder(bundle: str | Path, folder: str | Path, manifest: str | Path | None = None,
                       batch: int = 16) -> dict[str, np.ndarray]:
    """Run the bundle's Stage I model over a folder; returns an exported-embedding dict.

    Uses the runtime's ``monitor.model.emotion.EmotionModel`` (imported here so the
    embeddings path needs no Stage I code).
    """
    from tqdm import tqdm

    from calibration.data import check_embeddings
    from monitor.audio.io import read_audio
    from monitor.model.bundle import load_bundle
    from monitor.model.emotion import EmotionModel

    folder = Path(folder)
    rows = _audio_rows(folder, Path(manifest) if manifest else None)
    _, model = load_model(bundle)
    embs, probs = [], []
    for s in tqdm(range(0, len(rows), batch), desc="embedding audio", unit="batch"):
        waves = [read_audio(r["path"]) for r in rows[s:s + batch]]
        e, p = model.embed_waveforms(waves)
        embs.append(np.asarray(e, dtype=np.float32))
        probs.append(np.asarray(p, dtype=np.float64))
    n = len(rows)
    col = lambda key, default="": np.asarray([r.get(key) or default for r in rows], dtype=str)  # noqa: E731
    data = {
        "embeddings": np.concatenate(embs),
        "labels": col("label"),
        "speakers": col("speaker", "unknown"),
        "split": np.full(n, "test"),
        "sentence": col("sentence"),
        "intensity": col("intensity"),
    }
    classes = getattr(model, "labels", None)  # EmotionModel.labels: the head's class order
    if classes is not None:
        data["probs"] = np.concatenate(probs)
        data["classes"] = np.asarray(list(classes), dtype=str)
    for key in ("valence", "arousal"):
        if any(r.get(key) not in (None, "") for r in rows):
            data[key] = np.asarray([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])
    return check_embeddings(data, source=str(folder))
