"""Corpus adapters, the manifest they produce, and speaker-independent splits.

Every adapter walks a corpus folder in its original layout and returns a
:class:`Manifest`: one :class:`Item` per clip with its path, canonical emotion
label (see :mod:`calibration.anchors`), speaker, corpus and split, plus
valence/arousal/dominance where the corpus has them (IEMOCAP). Labels outside
the canonical vocabulary, files that do not match the naming scheme and files
soundfile cannot open are *reported* (``Manifest.skipped`` and a log line) and
left out, never dropped silently.

Adapters (``ADAPTERS``): ravdess, emovo, jl, emodb, cremad, iemocap, mead and
csv (a generic CSV with at least ``path,label``).

Splits are speaker-independent: a speaker's clips are all in one split.
IEMOCAP uses sessions 1-3 / 4 / 5 for train / validation / test as the original
work; other corpora are split by leaving speakers out (:func:`speaker_split`,
:func:`speaker_folds`); :func:`corpus_split` leaves a whole corpus out.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, overload

import numpy as np

from calibration.anchors import canonical_emotion
from calibration.data import RAVDESS_EMOTIONS, RAVDESS_INTENSITY  # the file-name codes, defined once

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3", ".m4a", ".opus")


@dataclass
class Item:
    """One clip of a manifest."""

    path: str
    label: str
    speaker: str
    corpus: str
    split: str = "train"
    raw_label: str = ""
    valence: float = math.nan
    arousal: float = math.nan
    dominance: float = math.nan
    intensity: str = ""
    gender: str = ""
    utterance: str = ""
    sentence: str = ""
    # a speech segment of the clip (training.segments): its span in seconds and the clip's key; NaN/"": the clip
    start: float = math.nan
    end: float = math.nan
    clip: str = ""

    @property
    def key(self) -> str:
        """A stable identifier: corpus + utterance id (or file name); a segment adds its number."""
        return f"{self.corpus}:{self.utterance or Path(self.path).stem}"

    @property
    def clip_key(self) -> str:
        """The key of the clip this item is (or is a segment of): what clip-level scores group by."""
        return self.clip or self.key

    @property
    def is_segment(self) -> bool:
        return not math.isnan(self.start)


@dataclass
class Manifest:
    """A list of :class:`Item` plus the files that were reported and skipped."""

    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    # ---- container protocol ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    @overload
    def __getitem__(self, index: int | np.integer) -> Item: ...

    @overload
    def __getitem__(self, index: slice | np.ndarray | list[int] | list[bool]) -> Manifest: ...

    def __getitem__(self, index: int | np.integer | slice | np.ndarray | list[int] | list[bool]) -> Item | Manifest:
        """An item by position, or a manifest of the items a slice, index array or boolean mask selects."""
        if isinstance(index, (slice, np.ndarray, list)):
            if isinstance(index, slice):
                return Manifest(self.items[index], list(self.skipped))
            idx = np.asarray(index)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            return Manifest([self.items[int(i)] for i in idx], list(self.skipped))
        return self.items[index]

    def __add__(self, other: "Manifest") -> "Manifest":
        return Manifest(self.items + other.items, self.skipped + other.skipped)

    # ---- columns ------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        values = [getattr(item, name) for item in self.items]
        if name in ("valence", "arousal", "dominance", "start", "end"):
            return np.asarray(values, dtype=np.float64)
        return np.asarray(values, dtype=str) if values else np.zeros(0, dtype=str)

    @property
    def labels(self) -> np.ndarray:
        return self.column("label")

    @property
    def speakers(self) -> np.ndarray:
        return self.column("speaker")

    @property
    def corpora(self) -> np.ndarray:
        return self.column("corpus")

    @property
    def splits(self) -> np.ndarray:
        return self.column("split")

    @property
    def keys(self) -> np.ndarray:
        return np.asarray([item.key for item in self.items], dtype=str)

    @property
    def clips(self) -> np.ndarray:
        """The clip each item belongs to (its own key for whole clips)."""
        return np.asarray([item.clip_key for item in self.items], dtype=str)

    @property
    def durations(self) -> np.ndarray:
        """Seconds of each segment (NaN for whole clips, whose length is not read here)."""
        return np.asarray([item.end - item.start for item in self.items], dtype=np.float64)

    def where(self, predicate: Callable[[Item], bool]) -> "Manifest":
        return Manifest([item for item in self.items if predicate(item)], list(self.skipped))

    def split(self, name: str) -> "Manifest":
        return self.where(lambda item: item.split == name)

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self.items),
            "corpora": dict(Counter(self.corpora.tolist())),
            "labels": dict(sorted(Counter(self.labels.tolist()).items())),
            "speakers": int(len(set(self.speakers.tolist()))),
            "splits": dict(Counter(self.splits.tolist())),
            "skipped": len(self.skipped),
        }

    # ---- persistence ----------------------------------------------------------------
    def to_csv(self, path: str | Path) -> None:
        names = [f.name for f in fields(Item)]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            for item in self.items:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                                 for k, v in asdict(item).items()})

    @classmethod
    def from_csv(cls, path: str | Path) -> "Manifest":
        return read_csv_manifest(path)

    def report(self, limit: int = 20) -> str:
        """A human-readable account of what was skipped and why."""
        if not self.skipped:
            return "no files skipped"
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        lines = [f"{len(self.skipped)} files skipped: " + ", ".join(f"{r} ({n})" for r, n in reasons.most_common())]
        lines += [f"  {p}: {r}" for p, r in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# helpers


def _audio_files(root: Path, pattern: str = "**/*") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _canonical(raw: str, label_map: dict[str, str | None] | None = None) -> str | None:
    """Canonical label, or None when the label is mapped away (``label_map[raw] = None``)."""
    key = raw.strip().lower()
    if label_map and key in label_map:
        mapped = label_map[key]
        return None if mapped is None else canonical_emotion(mapped)
    return canonical_emotion(key)


def _check_readable(path: Path) -> str | None:
    """None when soundfile can open the file and it holds audio, else the reason."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        return f"unreadable: {type(exc).__name__}: {str(exc)[:120]}"
    if info.frames <= 0 or info.samplerate <= 0:
        return "unreadable: empty audio"
    return None


class _Collector:
    """Collects items and skip reasons while an adapter walks a corpus."""

    def __init__(self, corpus: str, check_audio: bool, label_map: dict[str, str | None] | None = None):
        self.corpus = corpus
        self.check_audio = check_audio
        self.label_map = label_map
        self.manifest = Manifest()

    def skip(self, path: Path | str, reason: str) -> None:
        self.manifest.skipped.append((str(path), reason))

    def add(self, path: Path, raw_label: str, speaker: str, **extra: Any) -> None:
        try:
            label = _canonical(raw_label, self.label_map)
        except KeyError:
            self.skip(path, f"unknown label: {raw_label!r}")
            return
        if label is None:
            self.skip(path, f"label excluded: {raw_label!r}")
            return
        if self.check_audio:
            problem = _check_readable(path)
            if problem:
                self.skip(path, problem)
                return
        self.manifest.items.append(
            Item(path=str(path), label=label, raw_label=raw_label, speaker=f"{self.corpus}:{speaker}",
                 corpus=self.corpus, **extra)
        )

    def done(self) -> Manifest:
        if self.manifest.skipped:
            log.warning("%s: %s", self.corpus, self.manifest.report(limit=5))
        if not self.manifest.items:
            log.warning("%s: no usable clips found", self.corpus)
        return self.manifest


# ---------------------------------------------------------------------------------------
# adapters

_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def load_ravdess(root: str | Path, *, include_song: bool = False, check_audio: bool = True,
                 label_map: dict[str, str | None] | None = None,
                 test_speakers: Sequence[str] = ("21", "22", "23", "24"),
                 val_speakers: Sequence[str] = ("19", "20")) -> Manifest:
    """RAVDESS: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``; emotion, intensity and actor from the name.

    Speech only unless ``include_song``. Default split leaves actors 19-20 out
    for validation and 21-24 for test (each 50% female).
    """
    root = Path(root)
    col = _Collector("ravdess", check_audio, label_map)
    for path in _audio_files(root):
        m = _RAVDESS_NAME.match(path.stem)
        if not m:
            col.skip(path, "name does not match MM-VV-EE-II-SS-RR-AA")
            continue
        modality, channel, emo, intensity, statement, repetition, actor = m.groups()
        if channel == "02" and not include_song:
            col.skip(path, "song clip (include_song=False)")
            continue
        if emo not in RAVDESS_EMOTIONS:
            col.skip(path, f"unknown label: emotion code {emo}")
            continue
        split = "test" if actor in test_speakers else "val" if actor in val_speakers else "train"
        col.add(path, RAVDESS_EMOTIONS[emo], actor, split=split,
                intensity=RAVDESS_INTENSITY.get(intensity, intensity),
                gender="male" if int(actor) % 2 else "female", utterance=path.stem, sentence=statement)
    return col.done()


_EMOVO_NAME = re.compile(r"^([a-z]{3})-([fm]\d)-([a-z]\d)$", re.IGNORECASE)


def load_emovo(root: str | Path, *, check_audio: bool = True, label_map: dict[str, str | None] | None = None,
               test_speakers: Sequence[str] = ("f3", "m3"), val_speakers: Sequence[str] = ()) -> Manifest:
    """EMOVO: ``SPK/EMO-SPK-SENT.wav`` (dis gio neu pau rab sor tri)."""
    root = Path(root)
    col = _Collector("emovo", check_audio, label_map)
    for path in _audio_files(root):
        m = _EMOVO_NAME.match(path.stem)
        if not m:
            col.skip(path, "name does not match EMO-SPK-SENT")
            continue
        emo, spk, sent = m.groups()
        spk = spk.lower()
        split = "test" if spk in test_speakers else "val" if spk in val_speakers else "train"
        col.add(path, emo.lower(), spk, split=split, gender="female" if spk[0] == "f" else "male",
                utterance=path.stem, sentence=sent.lower())
    return col.done()


_JL_NAME = re.compile(r"^((?:fe)?male\d+)_([a-z]+)_(\d+[a-z]?)_(\d+)$", re.IGNORECASE)


def load_jl(root: str | Path, *, check_audio: bool = True, label_map: dict[str, str | None] | None = None,
            test_speakers: Sequence[str] = (), val_speakers: Sequence[str] = ()) -> Manifest:
    """JL-Corpus: ``SPEAKER_EMOTION_SENTENCE_TAKE.wav`` (any sub-folders).

    The secondary emotions (anxious, apologetic, assertive, concerned, encouraging) have no canonical
    anchor: they are reported and skipped like any unknown label.
    """
    root = Path(root)
    col = _Collector("jl", check_audio, label_map)
    for path in _audio_files(root):
        m = _JL_NAME.match(path.stem)
        if not m:
            col.skip(path, "name does not match SPEAKER_EMOTION_SENTENCE_TAKE")
            continue
        spk, emo, sent, take = m.groups()
        spk = spk.lower()
        split = "test" if spk in test_speakers else "val" if spk in val_speakers else "train"
        col.add(path, emo.lower(), spk, split=split, gender="female" if spk.startswith("female") else "male",
                utterance=path.stem, sentence=sent.lower())
    return col.done()


EMODB_EMOTIONS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
_EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([WLEAFTN])([a-z])$")
_EMODB_FEMALE = {"08", "09", "13", "14", "16"}


def load_emodb(root: str | Path, *, check_audio: bool = True, label_map: dict[str, str | None] | None = None,
               test_speakers: Sequence[str] = ("15", "16"), val_speakers: Sequence[str] = ("13", "14")) -> Manifest:
    """EmoDB (Berlin): ``wav/03a01Fa.wav`` = speaker 03, text a01, emotion F (Freude), version a."""
    root = Path(root)
    col = _Collector("emodb", check_audio, label_map)
    for path in _audio_files(root):
        m = _EMODB_NAME.match(path.stem)
        if not m:
            col.skip(path, "name does not match SStttEv")
            continue
        spk, text, emo, version = m.groups()
        split = "test" if spk in test_speakers else "val" if spk in val_speakers else "train"
        col.add(path, EMODB_EMOTIONS[emo], spk, split=split, gender="female" if spk in _EMODB_FEMALE else "male",
                utterance=path.stem, sentence=text)
    return col.done()


CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMAD_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


def load_cremad(root: str | Path, *, check_audio: bool = True, label_map: dict[str, str | None] | None = None,
                n_test_speakers: int = 10, n_val_speakers: int = 9, seed: int = 0) -> Manifest:
    """CREMA-D: ``AudioWAV/1001_DFA_ANG_XX.wav`` = actor, sentence, emotion (acted intent), level.

    Default split: speakers hashed (seeded) into test / val / train.
    """
    root = Path(root)
    col = _Collector("cremad", check_audio, label_map)
    for path in _audio_files(root):
        m = _CREMAD_NAME.match(path.stem)
        if not m:
            col.skip(path, "name does not match ACTOR_SENT_EMO_LVL")
            continue
        actor, sentence, emo, level = m.groups()
        if emo not in CREMAD_EMOTIONS:
            col.skip(path, f"unknown label: {emo}")
            continue
        col.add(path, CREMAD_EMOTIONS[emo], actor, intensity=CREMAD_LEVELS.get(level, level), utterance=path.stem,
                sentence=sentence)
    manifest = col.done()
    return speaker_split(manifest, n_test=n_test_speakers, n_val=n_val_speakers, seed=seed)


# IEMOCAP ------------------------------------------------------------------------------
_IEMOCAP_LINE = re.compile(
    r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>Ses\d\d[FM]_\S+)\s+(?P<emo>\w+)\s+"
    r"\[(?P<v>[\d.]+),\s*(?P<a>[\d.]+),\s*(?P<d>[\d.]+)\]"
)
IEMOCAP_CODES = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry", "exc": "excited", "fru": "frustrated",
                 "fea": "fearful", "sur": "surprised", "dis": "disgust"}
#: The usual IEMOCAP label sets. Values are label maps (raw code -> canonical, None = leave out).
IEMOCAP_LABEL_SETS: dict[str, dict[str, str | None]] = {
    # 4 classes, excited merged into happy (the most common setting)
    "4": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry",
          "fru": None, "fea": None, "sur": None, "dis": None, "oth": None, "xxx": None},
    "4-noexc": {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry",
                "exc": None, "fru": None, "fea": None, "sur": None, "dis": None, "oth": None, "xxx": None},
    "5": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry", "fru": "frustrated",
          "fea": None, "sur": None, "dis": None, "oth": None, "xxx": None},
    "9": {**{k: v for k, v in IEMOCAP_CODES.items()}, "oth": None, "xxx": None},
}


def load_iemocap(root: str | Path, *, labels: str = "4", check_audio: bool = True,
                 label_map: dict[str, str | None] | None = None,
                 sessions: dict[str, Sequence[int]] | None = None, scale_dimensions: bool = True) -> Manifest:
    """IEMOCAP: ``SessionN/sentences/wav/<dialog>/<utt>.wav`` + ``SessionN/dialog/EmoEvaluation/<dialog>.txt``.

    Categorical labels and valence/arousal/dominance (1-5 self-assessment
    manikin scale) come from the EmoEvaluation summary lines. ``labels`` picks
    a label set from :data:`IEMOCAP_LABEL_SETS` ("4": excited merged into
    happy). Splits are by session: 1-3 train, 4 validation, 5 test (change with
    ``sessions``). When ``scale_dimensions``, each dimension is scaled to
    [-1, 1] with the *training split's* minimum and maximum only (values
    outside are clipped).
    """
    root = Path(root)
    sessions = sessions or {"train": (1, 2, 3), "val": (4,), "test": (5,)}
    session_split = {int(s): name for name, ss in sessions.items() for s in ss}
    lmap = dict(IEMOCAP_LABEL_SETS[labels]) if labels else {}
    lmap.update(label_map or {})
    col = _Collector("iemocap", check_audio, lmap)
    session_dirs = sorted(p for p in root.glob("Session*") if p.is_dir())
    if not session_dirs and root.name.startswith("Session"):
        session_dirs = [root]
    for sdir in session_dirs:
        m = re.match(r"Session(\d+)$", sdir.name)
        if not m:
            continue
        session = int(m.group(1))
        wav_root = sdir / "sentences" / "wav"
        eval_dir = sdir / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            col.skip(sdir, "missing dialog/EmoEvaluation")
            continue
        for txt in sorted(eval_dir.glob("*.txt")):
            dialog = txt.stem
            for line in txt.read_text(errors="replace").splitlines():
                lm = _IEMOCAP_LINE.match(line.strip())
                if not lm:
                    continue
                utt = lm.group("utt")
                wav = wav_root / dialog / f"{utt}.wav"
                if not wav.is_file():
                    col.skip(wav, "missing audio for annotated utterance")
                    continue
                speaker_gender = utt.split("_")[-1][0]
                speaker = f"Ses{session:02d}{speaker_gender}"
                col.add(wav, lm.group("emo"), speaker, split=session_split.get(session, "unused"),
                        valence=float(lm.group("v")), arousal=float(lm.group("a")), dominance=float(lm.group("d")),
                        gender="female" if speaker_gender == "F" else "male", utterance=utt, sentence=dialog)
    manifest = col.done()
    manifest = manifest.where(lambda item: item.split != "unused")
    if scale_dimensions:
        manifest = scale_dimensions_to_unit(manifest)
    return manifest


def scale_dimensions_to_unit(manifest: Manifest, fit_split: str = "train",
                             dims: Sequence[str] = ("valence", "arousal", "dominance")) -> Manifest:
    """Scale each dimension to [-1, 1] with min/max of the ``fit_split`` items only; clip the rest."""
    fit = manifest.split(fit_split)
    items = list(manifest.items)
    for dim in dims:
        values = fit.column(dim)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo if hi > lo else 1.0
        items = [_scaled(it, dim, lo, span) for it in items]
    return Manifest(items, list(manifest.skipped))


def _scaled(item: Item, dim: str, lo: float, span: float) -> Item:
    """``item`` with dimension ``dim`` mapped from [lo, lo + span] to [-1, 1] and clipped (NaN stays NaN)."""
    value = getattr(item, dim)
    if not math.isfinite(value):
        return item
    change: dict[str, Any] = {dim: float(np.clip(2.0 * (value - lo) / span - 1.0, -1.0, 1.0))}
    return replace(item, **change)


# MEAD ---------------------------------------------------------------------------------
MEAD_EMOTIONS = {"angry": "angry", "contempt": "contempt", "disgusted": "disgust", "fear": "fearful",
                 "happy": "happy", "neutral": "neutral", "sad": "sad", "surprised": "surprised"}


def load_mead(root: str | Path, *, check_audio: bool = True, label_map: dict[str, str | None] | None = None,
              n_test_speakers: int = 6, n_val_speakers: int = 4, seed: int = 0) -> Manifest:
    """MEAD: ``<SPEAKER>/audio/<emotion>/level_<n>/<NNN>.<ext>`` (speakers like M003, W009).

    MEAD ships AAC (.m4a), which libsndfile cannot read: convert to WAV/FLAC
    in place of the originals keeping the layout (e.g. ``ffmpeg -i 001.m4a
    001.wav``); unreadable files are reported and skipped.
    """
    root = Path(root)
    col = _Collector("mead", check_audio, label_map)
    for path in _audio_files(root):
        rel = path.relative_to(root).parts
        try:
            i = rel.index("audio")
        except ValueError:
            col.skip(path, "not under <SPEAKER>/audio/")
            continue
        if i < 1 or len(rel) < i + 4:
            col.skip(path, "not <SPEAKER>/audio/<emotion>/level_<n>/<file>")
            continue
        speaker, emotion, level = rel[i - 1], rel[i + 1].lower(), rel[i + 2]
        if emotion not in MEAD_EMOTIONS:
            col.skip(path, f"unknown label: {emotion!r}")
            continue
        lm = re.match(r"level_(\d+)$", level)
        initial = speaker.upper()[:1]
        col.add(path, MEAD_EMOTIONS[emotion], speaker, intensity=f"level_{lm.group(1)}" if lm else level,
                gender="female" if initial == "W" else "male" if initial == "M" else "",
                utterance=f"{speaker}_{emotion}_{level}_{path.stem}", sentence=path.stem)
    return speaker_split(col.done(), n_test=n_test_speakers, n_val=n_val_speakers, seed=seed)


# generic CSV ------------------------------------------------------------------------
def read_csv_manifest(csv_path: str | Path, *, corpus: str | None = None, check_audio: bool = True,
                      label_map: dict[str, str | None] | None = None) -> Manifest:
    """A generic CSV: columns ``path,label`` and optionally ``speaker, split, corpus, valence,
    arousal, dominance, intensity, gender, utterance``. Relative paths are relative to the CSV's folder.
    Without a speaker column, every clip is its own speaker (so splits stay speaker-independent)."""
    csv_path = Path(csv_path)
    corpus_name = corpus or csv_path.stem
    manifests: dict[str, _Collector] = {}
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: a manifest CSV needs at least the columns path,label; "
                             f"got {reader.fieldnames}")
        for row in reader:
            c = (row.get("corpus") or corpus_name).strip()
            col = manifests.setdefault(c, _Collector(c, check_audio, label_map))
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            if not path.is_file():
                col.skip(path, "missing file")
                continue
            speaker = (row.get("speaker") or "").strip()
            if speaker.startswith(f"{c}:"):
                speaker = speaker[len(c) + 1:]
            extra: dict[str, Any] = {}
            for dim in ("valence", "arousal", "dominance"):
                value = (row.get(dim) or "").strip()
                extra[dim] = float(value) if value else math.nan
            for name in ("intensity", "gender", "utterance", "sentence"):
                if row.get(name):
                    extra[name] = row[name].strip()
            split = (row.get("split") or "train").strip() or "train"
            col.add(path, row["label"], speaker or path.stem, split=split, **extra)
    out = Manifest()
    for col in manifests.values():
        out = out + col.done()
    return out


ADAPTERS: dict[str, Callable[..., Manifest]] = {
    "ravdess": load_ravdess,
    "emovo": load_emovo,
    "jl": load_jl,
    "emodb": load_emodb,
    "cremad": load_cremad,
    "iemocap": load_iemocap,
    "mead": load_mead,
    "csv": read_csv_manifest,
}
#: Folder names under ``--data-root`` that are recognised without an explicit corpus name.
DEFAULT_FOLDERS = {"ravdess": "ravdess", "emovo": "emovo", "jl": "jl-corpus", "emodb": "emodb", "cremad": "crema-d",
                   "iemocap": "IEMOCAP_full_release", "mead": "mead"}
#: Corpora whose speakers act every emotion including neutral/calm: their neutral clips can serve as enrolment.
ANCHOR_SET_OF = {"ravdess": "ravdess", "emovo": "emovo", "jl": "jl", "emodb": "emodb", "cremad": "cremad",
                 "iemocap": "iemocap4", "mead": "mead"}


def load_corpus(name: str, path: str | Path, **options: Any) -> Manifest:
    """Run the adapter ``name`` (see :data:`ADAPTERS`) on ``path``."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown corpus {name!r}; adapters: {sorted(ADAPTERS)}")
    return ADAPTERS[name](path, **options)


def parse_corpus_arg(arg: str, data_root: str | Path | None = None) -> tuple[str, Path]:
    """``name`` (folder from :data:`DEFAULT_FOLDERS` under data_root) or ``name=path``."""
    if "=" in arg:
        name, path = arg.split("=", 1)
        return name.strip(), Path(path)
    name = arg.strip()
    if name not in ADAPTERS:
        raise KeyError(f"unknown corpus {name!r}; adapters: {sorted(ADAPTERS)}")
    if data_root is None:
        raise ValueError(f"corpus {name!r} given without a path: use {name}=PATH or --data-root")
    return name, Path(data_root) / DEFAULT_FOLDERS.get(name, name)


def load_corpora(specs: Iterable[str], data_root: str | Path | None = None, **options: dict[str, Any]) -> Manifest:
    """One manifest of several corpora (``NAME`` under ``data_root`` or ``NAME=PATH``); ``options[NAME]`` are
    keyword arguments of that corpus's adapter (e.g. ``iemocap={"labels": "5"}``)."""
    manifest = Manifest()
    for spec in specs:
        name, path = parse_corpus_arg(spec, data_root)
        if not path.exists():
            raise FileNotFoundError(f"corpus {name!r}: {path} does not exist")
        manifest = manifest + load_corpus(name, path, **options.get(name, {}))
    return manifest


# ---------------------------------------------------------------------------------------
# splits


def _stable_rank(values: Iterable[str], seed: int) -> list[str]:
    """Sort values by a seeded hash: a deterministic shuffle that does not depend on numpy's RNG."""
    return sorted(set(values), key=lambda v: hashlib.sha1(f"{seed}:{v}".encode()).hexdigest())


def speaker_split(manifest: Manifest, n_test: int, n_val: int, seed: int = 0) -> Manifest:
    """Assign whole speakers to test / val / train by a seeded hash order."""
    speakers = _stable_rank(manifest.speakers.tolist(), seed)
    test = set(speakers[:n_test])
    val = set(speakers[n_test:n_test + n_val])
    items = [replace(it, split="test" if it.speaker in test else "val" if it.speaker in val else "train")
             for it in manifest.items]
    return Manifest(items, list(manifest.skipped))


def speaker_folds(manifest: Manifest, n_folds: int, seed: int | None = None) -> np.ndarray:
    """Fold index per item with whole speakers per fold.

    ``seed=None`` keeps speakers in their sorted order (RAVDESS actors 01-06 in
    fold 0, 07-12 in fold 1, ...: 3 women and 3 men in each fold); an integer
    seed shuffles speakers by a seeded hash.
    """
    names = manifest.speakers.tolist()
    speakers = sorted(set(names)) if seed is None else _stable_rank(names, seed)
    if len(speakers) < n_folds:
        raise ValueError(f"{len(speakers)} speakers cannot make {n_folds} folds")
    fold_of = {spk: i * n_folds // len(speakers) for i, spk in enumerate(speakers)}
    return np.asarray([fold_of[s] for s in manifest.speakers], dtype=int)


def corpus_split(manifest: Manifest, test_corpus: str, val_corpus: str | None = None) -> Manifest:
    """Leave one corpus out: ``test_corpus`` becomes test, ``val_corpus`` (if any) val, the rest train."""
    if test_corpus not in set(manifest.corpora.tolist()):
        raise ValueError(f"test corpus {test_corpus!r} not in the manifest ({sorted(set(manifest.corpora))})")
    items = [replace(it, split="test" if it.corpus == test_corpus else "val" if it.corpus == val_corpus else "train")
             for it in manifest.items]
    return Manifest(items, list(manifest.skipped))


def with_folds(manifest: Manifest, folds: np.ndarray, test_fold: int, val_fold: int | None = None,
               only: str | None = None) -> Manifest:
    """Mark fold ``test_fold`` test, ``val_fold`` val, the rest train (items of corpora other than ``only``
    stay train)."""
    items = []
    for it, f in zip(manifest.items, folds, strict=True):
        if only is not None and it.corpus != only:
            split = "train"
        else:
            split = "test" if f == test_fold else "val" if val_fold is not None and f == val_fold else "train"
        items.append(replace(it, split=split))
    return Manifest(items, list(manifest.skipped))
