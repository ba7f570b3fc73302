"""Score a model bundle on a folder of audio: ``python -m training score``.

The Stage II metrics live in ``calibration.evaluate``; this module runs the
Stage I model over audio first, which is why it sits above the live app.
:func:`embed_audio_folder` gives the exported-embedding dict of a folder;
:func:`score_audio` scores the bundle's reducer on it with
``calibration.evaluate.report`` (``metrics.json`` and ``circumplex.png``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibration.data import check_embeddings, parse_ravdess_name
from calibration.evaluate import DEFAULT_OUT, report
from monitor.audio.io import read_audio
from monitor.model.bundle import load_model
from monitor.model.emotion import EmotionModel

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


def embed_audio(model: EmotionModel, folder: str | Path, manifest: str | Path | None = None,
                batch: int = 16) -> dict[str, np.ndarray]:
    """Run a Stage I model over a folder (RAVDESS names, or any files listed in ``manifest``);
    returns an exported-embedding dict (``calibration.data``)."""
    folder = Path(folder)
    rows = _audio_rows(folder, Path(manifest) if manifest else None)
    embs, probs = [], []
    for s in tqdm(range(0, len(rows), batch), desc="embedding audio", unit="batch"):
        waves = [read_audio(r["path"]) for r in rows[s:s + batch]]
        e, p = model.embed_waveforms(waves)
        embs.append(np.asarray(e, dtype=np.float32))
        probs.append(np.asarray(p, dtype=np.float64))
    n = len(rows)

    def col(key: str, default: str = "") -> np.ndarray:
        return np.asarray([r.get(key) or default for r in rows], dtype=str)

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


def embed_audio_folder(bundle: str | Path, folder: str | Path, manifest: str | Path | None = None,
                       batch: int = 16) -> dict[str, np.ndarray]:
    """Run the bundle's Stage I model (the runtime's ``load_model``) over a folder: :func:`embed_audio`."""
    _, model = load_model(bundle)
    return embed_audio(model, folder, manifest, batch)


def score_audio(bundle: str | Path, audio: str | Path, manifest: str | Path | None = None, method: str = "fast",
                anchors: str | None = None, out: str | Path = DEFAULT_OUT, title: str | None = None) -> int:
    """Embed the audio with the bundle's model, then score the bundle's reducer on it
    (``calibration.evaluate.report``: metrics.json + circumplex.png in ``out``, a summary on stdout)."""
    loaded, model = load_model(bundle)
    if loaded.reducer is None:
        raise ValueError(f"{bundle}: the bundle has no fitted reducer to score")
    data = embed_audio(model, audio, manifest)
    source = f"{Path(audio).name} (audio{', ' + Path(manifest).name if manifest else ''})"
    return report(loaded.reducer, data, source, anchors, method, Path(out), title)
