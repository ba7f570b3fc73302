"""The researcher's API: valence and arousal for a signal, a file, a folder or a segmented index, as a table.

    >>> from monitor import MoodModel
    >>> model = MoodModel.from_pretrained("default")
    >>> model.process_file("clip.wav")          # one row per speech segment
                                                    valence   arousal  confidence  prob_neutral  ...
    file     start                  end
    clip.wav 0 days 00:00:00.510000 0 days 00:00:03.270000  -0.27   0.41   0.53   0.08  ...

Conventions are audinterface's (``process_signal``/``process_file``/
``process_folder``/``process_index`` return a ``pandas.DataFrame`` on an
audformat segmented index: ``file``, ``start``, ``end`` as timedeltas) and
Hugging Face's (``from_pretrained``, ``save_pretrained``). The numbers are the
live monitor's: the same audio reader, the same VAD segmentation
(``segment=False``: the file, or the indexed stretch, is one segment), the same
model and the same anchored reducer, one segment at a time
(``Projector.locate``), so a file scored here and replayed through the live
pipeline gives the same points. docs/api.md has the details.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal as signals
import warnings
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence, Union

import numpy as np
import pandas as pd

from calibration.speaker import SpeakerBaseline
from monitor.audio.io import AudioInputError, read_audio
from monitor.audio.segmenter import VadConfig, segment_signal
from monitor.live.projection import Projector
from monitor.live.speakers import SpeakerAttributor
from monitor.model.audio_format import SAMPLE_RATE
from monitor.model.bundle import ModelBundle, load_bundle
from monitor.model.emotion import EmotionModel, choose_device
from monitor.model.speaker_encoders import DEFAULT_SPEAKER_ENCODER

log = logging.getLogger(__name__)

#: The index levels of every table (audformat's segmented index).
INDEX_NAMES = ("file", "start", "end")
#: The value columns, before one ``prob_<class>`` column per class (in the model's label order).
VALUE_COLUMNS = ("valence", "arousal", "confidence")
PROBABILITY_PREFIX = "prob_"
#: With a patient voiceprint (``patient=`` and a store that holds one): who spoke each segment, as in a live session.
SPEAKER_COLUMNS = ("speaker", "speaker_score")
#: With ``errors="report"``: the column that holds why a file could not be scored (missing when it was).
ERROR_COLUMN = "error"
_TEXT_COLUMNS = ("speaker", ERROR_COLUMN)
#: What ``process_folder`` picks up by default (whatever soundfile can read; MP3 needs libsndfile >= 1.1).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

Errors = Literal["raise", "report"]
PathLike = Union[str, "os.PathLike[str]"]
TimeLike = Union[float, int, pd.Timedelta, np.timedelta64, None]

#: Audio handed to the model at once: at most ``batch_size`` segments and about this many seconds.
_BATCH_SECONDS = 120.0
#: Audio read and cut ahead of the model, at most (besides the batch of files it works on).
_READ_AHEAD_SECONDS = 300.0


@dataclass(frozen=True)
class _Job:
    """One entry to score: its name in the table, the stretch (seconds; None = from the start / to the end), and
    for ``process_signal`` its 16 kHz audio already in memory."""

    file: str
    start: float | None = None
    end: float | None = None
    audio: np.ndarray | None = field(default=None, compare=False, repr=False)
    path: str | None = None  # where to read it, when not at ``file``

    @property
    def source(self) -> str:
        return self.file if self.path is None else self.path


@dataclass
class _FileResult:
    """What became of one job: its rows (seconds for start/end), or why it failed."""

    file: str
    rows: list[dict[str, Any]]
    error: str | None = None


@dataclass
class _Prepared:
    """A job whose audio is read and cut: the segments' (start, end) and audio, waiting for the model."""

    job: _Job
    spans: list[tuple[float, float]]
    waves: list[np.ndarray]
    stretch: tuple[float, float]


@dataclass(frozen=True)
class _WorkerState:
    """What a worker process needs to rebuild the model (spawned processes share nothing)."""

    bundle_path: str
    device: str
    precision: str
    baseline: SpeakerBaseline | None
    vad: VadConfig
    batch_size: int
    threads: int
    voiceprints: tuple[Any, Any] | None  # (patient, clinician) Voiceprints, when segments are attributed


class MoodModel:
    """A model bundle ready to score recordings; see the module docstring and docs/api.md.

    Build it with :meth:`from_pretrained`. ``baseline`` is the speaker's
    enrolment baseline, applied to everything this object scores (for models
    trained with enrolment normalisation, such as the shipped default; without
    one, population statistics are used, as in a live session of a patient who
    was never enrolled).
    """

    def __init__(self, bundle: ModelBundle, *, device: str = "auto", precision: str = "auto",
                 baseline: SpeakerBaseline | None = None, vad: VadConfig | None = None, batch_size: int = 16,
                 num_workers: int = 1, progress: bool | None = None, model: EmotionModel | None = None,
                 ray: str | None = None):
        if bundle.reducer is None:
            raise ValueError(f"model {bundle.model_id} has no fitted reducer; it cannot place points")
        if batch_size < 1 or num_workers < 1:
            raise ValueError(f"batch_size and num_workers must be >= 1, got {batch_size} and {num_workers}")
        self.bundle = bundle
        self.requested_device = device
        self.device = str(choose_device(device))
        self.precision = precision
        self.model = model if model is not None else bundle.build_model(device=self.device, precision=precision)
        self.projector = Projector(bundle.reducer, bundle.labels)
        self.baseline = _checked_baseline(baseline, bundle.model_id, self.model)
        self.vad = vad or VadConfig()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        #: Where ``num_workers`` Ray Data workers score the files (a ``--ray`` address: "local", "auto",
        #: "ray://HOST:10001"); None: this machine's processes.
        self.ray = ray
        if ray is not None:
            from monitor.live.ray_pool import import_ray

            import_ray()  # a missing extra is a clear error now, not after the first files
        #: Attributes every segment to patient/clinician/unknown (``speaker`` columns); set by ``patient=``.
        self.speakers: SpeakerAttributor | None = None

    # ---- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: PathLike = "default", *, device: str = "auto", precision: str = "auto",
                        revision: str | None = None, cache_dir: PathLike | None = None,
                        token: str | bool | None = None, baseline: SpeakerBaseline | PathLike | None = None,
                        patient: str | None = None, clinician: str | None = None, db: PathLike | None = None,
                        vad: VadConfig | None = None, batch_size: int = 16, num_workers: int = 1,
                        progress: bool | None = None, ray: str | None = None,
                        speaker_encoder: str = DEFAULT_SPEAKER_ENCODER) -> MoodModel:
        """Load a model: "default" (the shipped bundle), a shipped name, a bundle folder, or a Hub repo id.

        Hub repo ids (``org/name``) go through ``huggingface_hub`` with its
        cache (``cache_dir``, ``revision``, ``token``); with ``HF_HUB_OFFLINE=1``
        only the cache is read.

        Enrolment: ``baseline`` is a ``SpeakerBaseline``, a baseline JSON file
        (``SpeakerBaseline.save``) or a recording of calm speech to enrol from;
        ``patient`` takes that patient's stored baseline for this model from the
        monitor's store (``db``: its SQLite file; default: the monitor's), and,
        when the store holds the patient's voiceprint, adds the live monitor's
        ``speaker`` and ``speaker_score`` columns (with ``clinician``: that
        clinician's stored voiceprint too). ``speaker_encoder``: the encoder the
        voiceprints were made with ("ecapa", the default, or "resemblyzer";
        ``monitor.model.speaker_encoders``).

        ``device``: auto (CUDA when present), cpu, cuda, cuda:1; ``precision``:
        auto, fp32, bf16, fp16, int8. ``batch_size``: segments embedded
        together; ``num_workers``: processes for ``process_files``/
        ``process_folder``/``process_index`` (each loads its own model);
        ``progress``: a progress bar (default: when more than one file).
        ``ray``: score files with ``num_workers`` Ray Data workers instead
        ("local": Ray on this machine, "auto": the cluster it belongs to,
        "ray://HOST:10001"); the table is the same.
        """
        bundle = load_bundle(name_or_path, revision=revision,
                             cache_dir=None if cache_dir is None else os.fspath(cache_dir), token=token)
        instance = cls(bundle, device=device, precision=precision, vad=vad, batch_size=batch_size,
                       num_workers=num_workers, progress=progress, ray=ray)
        if baseline is not None and patient is not None:
            raise ValueError("give either baseline= or patient=, not both")
        if clinician is not None and patient is None:
            raise ValueError("clinician= tells a clinician's voice from the patient's: give patient= too")
        if patient is not None:
            instance.baseline = _checked_baseline(_patient_baseline(patient, bundle.model_id, db), bundle.model_id,
                                                  instance.model)
            instance.speakers = _attributor(patient, clinician, db, instance.device, speaker_encoder)
        elif baseline is not None:
            instance.baseline = _checked_baseline(instance._baseline_from(baseline), bundle.model_id,
                                                  instance.model)
        return instance

    def save_pretrained(self, folder: PathLike) -> Path:
        """Write the model bundle to ``folder``; ``from_pretrained(folder)`` reads it back (the baseline is not
        part of it: baselines belong to speakers, not to models)."""
        return self.bundle.save(folder)

    @property
    def model_id(self) -> str:
        """The exact model (name, version and content hash), as the store and the JSONL record it."""
        return self.bundle.model_id

    @property
    def labels(self) -> tuple[str, ...]:
        """The classes, in the order of the ``prob_<class>`` columns."""
        return tuple(self.bundle.labels)

    @property
    def columns(self) -> list[str]:
        """The value columns of every table: valence, arousal, confidence, ``prob_<class>`` per class, then
        ``speaker`` and ``speaker_score`` when segments are attributed."""
        speakers = SPEAKER_COLUMNS if self.speakers is not None else ()
        return [*VALUE_COLUMNS, *(PROBABILITY_PREFIX + c for c in self.labels), *speakers]

    def __repr__(self) -> str:
        return (f"MoodModel({self.model_id!r}, device={self.device!r}, enrolled={self.baseline is not None}, "
                f"batch_size={self.batch_size}, num_workers={self.num_workers}"
                + (f", ray={self.ray!r})" if self.ray is not None else ")"))

    # ---- scoring --------------------------------------------------------------------------------
    def process_signal(self, signal: np.ndarray, sampling_rate: int, *, file: str = "", start: TimeLike = None,
                       end: TimeLike = None, segment: bool = True) -> pd.DataFrame:
        """Score an in-memory signal: [samples], [samples, channels] or [channels, samples], any rate.

        Channels are averaged and the rate converted exactly as a file is when
        it is read, so ``process_signal(*soundfile.read(path))`` equals
        ``process_file(path)``. ``file`` names the signal in the index;
        ``start``/``end`` (seconds or timedeltas) score only that stretch.
        """
        job = _Job(file, _seconds(start), _seconds(end), to_model_audio(signal, sampling_rate, file or "the signal"))
        return self._collect([job], segment, "raise", show=False)

    def process_file(self, file: PathLike, start: TimeLike = None, end: TimeLike = None, *,
                     segment: bool = True) -> pd.DataFrame:
        """Score one file (any format soundfile reads, any rate or channel count), or its stretch ``start``-``end``."""
        return self._collect([_Job(os.fspath(file), _seconds(start), _seconds(end))], segment, "raise", show=False)

    def process_files(self, files: Sequence[PathLike], starts: Sequence[TimeLike] | None = None,
                      ends: Sequence[TimeLike] | None = None, *, segment: bool = True,
                      errors: Errors = "raise") -> pd.DataFrame:
        """Score several files (or stretches of them) into one table, in the order given.

        ``errors="report"``: a file that cannot be read or scored gets one row
        with NaN values and the reason in an ``error`` column, and the rest
        go on; ``"raise"`` (default) stops at the first.
        """
        jobs = _jobs(files, starts, ends)
        return self._collect(jobs, segment, errors, show=self._show(len(jobs)))

    def process_folder(self, root: PathLike, pattern: str = "**/*", *, suffixes: Iterable[str] = AUDIO_SUFFIXES,
                       segment: bool = True, errors: Errors = "raise") -> pd.DataFrame:
        """Score every audio file under ``root`` whose path matches the glob ``pattern`` (recursive by default)
        and ends in one of ``suffixes``; files are taken in sorted order, named ``root/relative/path``."""
        return self.process_files(find_audio(root, pattern, suffixes), segment=segment, errors=errors)

    def process_index(self, index: pd.Index, *, root: PathLike | None = None, segment: bool = False,
                      errors: Errors = "raise") -> pd.DataFrame:
        """Score an audformat index: filewise (``file``) or segmented (``file``, ``start``, ``end``; an ``end`` of
        NaT runs to the end of the file). Relative file names are taken under ``root``.

        Each entry is one segment by default (the index is the segmentation);
        ``segment=True`` runs the VAD inside each entry. The result is indexed
        by the entries' files as given (not joined with ``root``).
        """
        names = [str(f) for f in index.get_level_values("file")]
        if isinstance(index, pd.MultiIndex) and "start" in index.names and "end" in index.names:
            starts: list[float | None] = [_seconds(s) for s in index.get_level_values("start")]
            ends: list[float | None] = [_seconds(e) for e in index.get_level_values("end")]
        elif index.names == ["file"]:
            starts, ends = [None] * len(names), [None] * len(names)
        else:
            raise ValueError(f"not an audformat index: levels {list(index.names)}; expected ['file'] or "
                             "['file', 'start', 'end']")
        folder = None if root is None else os.fspath(root)
        jobs = [_Job(n, s, e, path=None if folder is None or os.path.isabs(n) else os.path.join(folder, n))
                for n, s, e in zip(names, starts, ends, strict=True)]
        return self._collect(jobs, segment, errors, show=self._show(len(jobs)))

    def iter_files(self, files: Sequence[PathLike], starts: Sequence[TimeLike] | None = None,
                   ends: Sequence[TimeLike] | None = None, *, segment: bool = True,
                   errors: Errors = "raise") -> Iterator[pd.DataFrame]:
        """Like ``process_files``, one table per file as each is done (in the order given): for long batches
        that save as they go (``mood-monitor analyze`` does)."""
        jobs = _jobs(files, starts, ends)
        for result in self._results(jobs, segment, errors, show=self._show(len(jobs))):
            yield self._frame(_rows_of(result), errors)

    # ---- the work -------------------------------------------------------------------------------
    def _show(self, n_files: int) -> bool:
        return self.progress if self.progress is not None else n_files > 1

    def _collect(self, jobs: list[_Job], segment: bool, errors: Errors, show: bool) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for result in self._results(jobs, segment, errors, show):
            rows += _rows_of(result)
        return self._frame(rows, errors)

    def _frame(self, rows: list[dict[str, Any]], errors: Errors) -> pd.DataFrame:
        columns = self.columns + ([ERROR_COLUMN] if errors == "report" else [])
        return rows_to_frame(rows, columns)

    def _results(self, jobs: list[_Job], segment: bool, errors: Errors, show: bool) -> Iterator[_FileResult]:
        """One result per job, in order; through worker processes when asked for and worth it."""
        if errors not in ("raise", "report"):
            raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")
        from tqdm.auto import tqdm

        with tqdm(total=len(jobs), desc="mood", unit="file", disable=not show, dynamic_ncols=True) as bar:
            on_disk = all(j.audio is None for j in jobs)  # other workers can read them
            if self.ray is not None and jobs and on_disk:
                results = self._results_on_ray(jobs, segment, errors)
            elif self.num_workers > 1 and len(jobs) > 1 and on_disk:
                results = self._results_in_processes(jobs, segment, errors)
            else:
                results = self._results_here(jobs, segment, errors)
            for result in results:
                bar.update()
                yield result

    def _results_here(self, jobs: Sequence[_Job], segment: bool, errors: Errors) -> Iterator[_FileResult]:
        """Read and cut files (ahead, on a helper thread); embed their segments together in batches; hand results
        on in order."""
        pending: list[_Prepared | _FileResult] = []
        n_segments = 0
        for item in self._prepared(jobs, segment, errors):
            pending.append(item)
            n_segments += len(item.waves) if isinstance(item, _Prepared) else 0
            if n_segments >= self.batch_size:
                yield from self._finish(pending, errors)
                pending, n_segments = [], 0
        yield from self._finish(pending, errors)

    def _prepared(self, jobs: Sequence[_Job], segment: bool, errors: Errors) -> Iterator[_Prepared | _FileResult]:
        """The jobs read and cut, in order. With more than one, a helper thread works ahead of the model (as the
        live monitor's segmenter thread does): reading and the VAD overlap with the model, which spends its time
        in native code. It stays at most a batch of files and about ``_READ_AHEAD_SECONDS`` of audio ahead."""
        if len(jobs) < 2:
            yield from (self._prepare_one(job, segment, errors) for job in jobs)
            return
        limit = max(2, self.batch_size)
        pool = ThreadPoolExecutor(1, thread_name_prefix="mood-reader")
        ahead: deque[Future[_Prepared | _FileResult]] = deque()
        try:
            for job in jobs:
                while ahead and (len(ahead) >= limit or _buffered(ahead) > _READ_AHEAD_SECONDS * SAMPLE_RATE):
                    yield ahead.popleft().result()
                ahead.append(pool.submit(self._prepare_one, job, segment, errors))
            while ahead:
                yield ahead.popleft().result()
        finally:  # an error, or a consumer that stops early: what is queued is dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare_one(self, job: _Job, segment: bool, errors: Errors) -> _Prepared | _FileResult:
        try:
            return self._prepare(job, segment)
        except Exception as exc:  # noqa: BLE001 - reported per file (or raised, by choice)
            if errors == "raise":
                raise
            return _FileResult(job.file, [], _message(exc))

    def _prepare(self, job: _Job, segment: bool) -> _Prepared:
        """Read the job's audio, take its stretch and cut it as the live monitor does (or keep it whole)."""
        audio = job.audio if job.audio is not None else read_audio(job.source)
        duration = len(audio) / SAMPLE_RATE
        t0 = min(max(0.0, job.start or 0.0), duration)
        t1 = duration if job.end is None else min(max(job.end, t0), duration)
        piece = audio[int(round(t0 * SAMPLE_RATE)):int(round(t1 * SAMPLE_RATE))]
        if not segment:
            return _Prepared(job, [(t0, t1)] if len(piece) else [], [piece] if len(piece) else [], (t0, t1))
        spans, waves = [], []
        end_of_piece = len(piece) / SAMPLE_RATE
        splitter = self.speakers.cut_points if self.speakers is not None and self.speakers.cuts_turns else None
        for s in segment_signal(piece, self.vad, splitter):  # the last frame is zero-padded: end at the audio's end
            spans.append((t0 + s.t_start, t0 + min(s.t_end, end_of_piece)))
            waves.append(s.audio)
        return _Prepared(job, spans, waves, (t0, t1))

    def _finish(self, pending: list[_Prepared | _FileResult], errors: Errors) -> Iterator[_FileResult]:
        """Embed every segment of the pending jobs and place each point; a job that fails fails alone."""
        prepared = [p for p in pending if isinstance(p, _Prepared)]
        done = self._embed_jobs(prepared, errors)
        for item in pending:
            yield item if isinstance(item, _FileResult) else done[id(item)]

    def _embed_jobs(self, prepared: list[_Prepared], errors: Errors) -> dict[int, _FileResult]:
        waves = [w for p in prepared for w in p.waves]
        try:
            embeddings, probabilities = self._embed(waves)
        except Exception as exc:  # noqa: BLE001 - retried job by job, so only the one that fails is lost
            if errors == "raise":
                raise
            if len(prepared) == 1:
                return {id(prepared[0]): _FileResult(prepared[0].job.file, [], _message(exc))}
            out: dict[int, _FileResult] = {}
            for p in prepared:
                out.update(self._embed_jobs([p], errors))
            return out
        voices = self.speakers(waves) if self.speakers is not None else None  # the same segments, one pass
        out, i = {}, 0
        for p in prepared:
            n = len(p.spans)
            try:
                rows = self._rows(p, embeddings[i:i + n], probabilities[i:i + n])
                if voices is not None and n:
                    for row, voice in zip(rows, voices[i:i + n], strict=True):
                        row["speaker"], row["speaker_score"] = voice.speaker, voice.speaker_score
                out[id(p)] = _FileResult(p.job.file, rows)
            except Exception as exc:  # noqa: BLE001 - e.g. a non-finite embedding the reducer refuses
                if errors == "raise":
                    raise
                out[id(p)] = _FileResult(p.job.file, [], _message(exc))
            i += n
        return out

    def _rows(self, p: _Prepared, embeddings: np.ndarray, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """One row per segment, placed one at a time by the live pipeline's own step (``Projector.locate``)."""
        rows = []
        for (start, end), embedding, probs in zip(p.spans, embeddings, probabilities, strict=True):
            where = self.projector.locate(embedding, probs)
            row: dict[str, Any] = {"file": p.job.file, "start": _tick(start), "end": _tick(end),
                                   "valence": where.valence, "arousal": where.arousal, "confidence": where.confidence}
            row.update((PROBABILITY_PREFIX + c, v) for c, v in where.probabilities.items())
            rows.append(row)
        if not rows:  # no speech: one row of NaN for the stretch, so every input shows in the table
            rows.append({"file": p.job.file, "start": _tick(p.stretch[0]), "end": _tick(p.stretch[1])})
        return rows

    def _embed(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, probabilities) of the waves, in batches of at most ``batch_size`` and ~2 min of audio."""
        if not waves:
            return np.zeros((0, 0), np.float32), np.zeros((0, len(self.labels)), np.float32)
        embeddings, probabilities = [], []
        batch: list[np.ndarray] = []
        samples = 0
        for wave in waves:
            if batch and (len(batch) >= self.batch_size or samples + len(wave) > _BATCH_SECONDS * SAMPLE_RATE):
                e, p = self.model.embed_waveforms(batch, self.baseline)
                embeddings.append(e)
                probabilities.append(p)
                batch, samples = [], 0
            batch.append(wave)
            samples += len(wave)
        e, p = self.model.embed_waveforms(batch, self.baseline)
        return np.concatenate([*embeddings, e]), np.concatenate([*probabilities, p])

    def _results_in_processes(self, jobs: list[_Job], segment: bool, errors: Errors) -> Iterator[_FileResult]:
        """Jobs in chunks over ``num_workers`` spawned processes, each with its own model; results in order."""
        workers = min(self.num_workers, len(jobs))
        state = self._worker_state(self.device, threads=max(1, (os.cpu_count() or 1) // workers))
        chunk = self._chunk(len(jobs), workers)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(state,))
        try:
            futures: list[Future[list[_FileResult]]] = [
                pool.submit(_worker_run, jobs[i:i + chunk], segment, errors) for i in range(0, len(jobs), chunk)]
            for future in futures:
                yield from future.result()
        finally:  # also on an error, Ctrl-C or a consumer that stops early: queued chunks are dropped
            pool.shutdown(wait=False, cancel_futures=True)

    def _chunk(self, jobs: int, workers: int) -> int:
        """Files per task: about four tasks per worker (so a slow file does not hold the others back), at most
        a batch."""
        return max(1, min(self.batch_size, math.ceil(jobs / (workers * 4))))

    def _worker_state(self, device: str, threads: int) -> _WorkerState:
        if self.bundle.path is None:
            raise ValueError("num_workers > 1 and ray need a bundle loaded from a folder (save_pretrained it first)")
        voiceprints = None if self.speakers is None else (self.speakers.patient, self.speakers.clinician)
        return _WorkerState(os.fspath(self.bundle.path), device, self.precision, self.baseline, self.vad,
                            self.batch_size, threads=threads, voiceprints=voiceprints)

    def _results_on_ray(self, jobs: list[_Job], segment: bool, errors: Errors) -> Iterator[_FileResult]:
        """Jobs fanned out with Ray Data over ``num_workers`` workers (one model each, a GPU each where the
        cluster has GPUs); results come back in the order given, as the worker processes' do."""
        from monitor.live.ray_pool import import_ray, init_ray

        ray = import_ray()
        init_ray(self.ray)
        from ray import data as ray_data

        context = ray_data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the table's order is the order given
        context.enable_progress_bars = False  # ours counts files
        workers = min(self.num_workers, len(jobs))
        gpus = 1 if self.requested_device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
        state = self._worker_state("auto" if gpus else "cpu", threads=1)
        chunk = self._chunk(len(jobs), workers)
        items = [{"order": i, "file": j.file, "path": os.path.abspath(j.source), "start": _nan_if_none(j.start),
                  "end": _nan_if_none(j.end)} for i, j in enumerate(jobs)]
        data = ray_data.from_items(items, override_num_blocks=math.ceil(len(items) / chunk))
        scored = data.map_batches(_RayScorer, fn_constructor_args=(state, segment, errors), batch_size=chunk,
                                  batch_format="numpy", compute=ray_data.ActorPoolStrategy(size=workers),
                                  num_cpus=1, num_gpus=gpus)
        for expected, row in enumerate(scored.iter_rows()):
            if int(row["order"]) != expected:  # pragma: no cover - preserve_order is Ray Data's promise
                raise RuntimeError(f"Ray Data returned file {row['order']} where {expected} was due")
            yield _FileResult(**json.loads(str(row["result"])))

    def _baseline_from(self, source: SpeakerBaseline | PathLike) -> SpeakerBaseline:
        """A baseline object, a baseline JSON file, or a recording to enrol from (cut by the same VAD)."""
        if isinstance(source, SpeakerBaseline):
            return source
        path = Path(source)
        if path.suffix.lower() == ".json":
            return SpeakerBaseline.load(path)
        from monitor.model.enrolment import enroll

        segments = [s.audio for s in segment_signal(read_audio(path), self.vad)]
        return enroll(self.model, segments, model_id=self.model_id, source=path.name)


# ---- tables -------------------------------------------------------------------------------------
def rows_to_frame(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows with ``file`` and ``start``/``end`` in seconds (NaN: open end) -> a table on an audformat segmented
    index, with ``columns`` (float64; ``speaker`` and ``error`` as text, missing where there was none)."""
    index = segmented_index([r["file"] for r in rows], [r["start"] for r in rows], [r["end"] for r in rows])
    numeric = [c for c in columns if c not in _TEXT_COLUMNS]
    values = np.array([[r.get(c, np.nan) for c in numeric] for r in rows], dtype=np.float64).reshape(
        len(rows), len(numeric))
    table = pd.DataFrame(values, index=index, columns=numeric)
    for column in (c for c in columns if c in _TEXT_COLUMNS):
        table[column] = pd.array([r.get(column) for r in rows], dtype="string")
    return table if list(table.columns) == list(columns) else table[list(columns)]


def segmented_index(files: Sequence[str], starts: Sequence[float], ends: Sequence[float]) -> pd.MultiIndex:
    """``audformat.segmented_index(files, starts, ends)`` for seconds (NaN end: NaT), built directly from levels
    and codes: the same index, several times cheaper for the one-row tables of single calls."""
    def level(values: np.ndarray) -> tuple[pd.Index, np.ndarray]:
        known = ~np.isnan(values)
        uniques, codes = np.unique(values[known], return_inverse=True)
        full = np.full(len(values), -1, dtype=np.int64)
        full[known] = codes
        return pd.to_timedelta(uniques, unit="s").astype("timedelta64[ns]"), full

    names, file_codes = np.unique(np.asarray(list(files), dtype=object), return_inverse=True)
    (start_level, start_codes), (end_level, end_codes) = (level(np.asarray(starts, dtype=np.float64)),
                                                          level(np.asarray(ends, dtype=np.float64)))
    return pd.MultiIndex(levels=[pd.Index(names, dtype="string"), start_level, end_level],
                         codes=[file_codes.astype(np.int64), start_codes, end_codes], names=list(INDEX_NAMES),
                         verify_integrity=False)


def find_audio(root: PathLike, pattern: str = "**/*", suffixes: Iterable[str] = AUDIO_SUFFIXES) -> list[Path]:
    """The audio files under ``root`` matching ``pattern``, sorted; FileNotFoundError when there are none."""
    folder = Path(root)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    wanted = {s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes}
    files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in wanted and p.is_file())
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(sorted(wanted))}) matching {pattern!r} under {folder}")
    return files


def to_model_audio(signal: np.ndarray, sampling_rate: int, name: str = "the signal") -> np.ndarray:
    """Any signal -> the model's 16 kHz mono float32, through the very reader a file goes through.

    The samples are written, in their own sample type (so integers are scaled
    as soundfile scales PCM), to a WAV file private to this process (in
    memory, /dev/shm, where there is one) and read back with
    ``monitor.audio.io.read_audio``: the same mixing to mono, repairs and
    resampling as ``process_file`` of the same samples, whatever the reader
    does. [channels, samples] is recognised by having fewer rows than columns.
    """
    import tempfile

    import soundfile as sf

    rate = int(sampling_rate)
    if rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate}")
    x = np.asarray(signal)
    if x.ndim == 2 and x.shape[0] < x.shape[1]:
        x = x.T  # [channels, samples] (audinterface's layout) -> [samples, channels]
    elif x.ndim not in (1, 2):
        raise ValueError(f"signal must be [samples], [samples, channels] or [channels, samples]; got {x.shape}")
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    subtype = _WAV_SUBTYPES.get(x.dtype.str[1:])
    if subtype is None:  # other sample types: as float, integers scaled to [-1, 1) like PCM
        if np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
        x, subtype = x.astype(np.float64), "DOUBLE"
    shm = "/dev/shm"
    folder = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mood-monitor-", dir=folder) as tmp:  # a 0700 folder, removed after
        path = os.path.join(tmp, "signal.wav")
        sf.write(path, x, rate, format="RF64" if x.nbytes > 2**31 else "WAV", subtype=subtype)
        try:
            return read_audio(path)
        except AudioInputError as exc:
            raise AudioInputError(str(exc).replace(path, name)) from None


#: numpy sample types a WAV file holds as they are.
_WAV_SUBTYPES = {"i2": "PCM_16", "i4": "PCM_32", "u1": "PCM_U8", "f4": "FLOAT", "f8": "DOUBLE"}


# ---- helpers ------------------------------------------------------------------------------------
def _jobs(files: Sequence[PathLike], starts: Sequence[TimeLike] | None,
          ends: Sequence[TimeLike] | None) -> list[_Job]:
    if isinstance(files, (str, os.PathLike)):
        raise TypeError("files must be a list of paths; for one file use process_file")
    n = len(files)
    first = [None] * n if starts is None else [_seconds(s) for s in starts]
    last = [None] * n if ends is None else [_seconds(e) for e in ends]
    if not len(first) == len(last) == n:
        raise ValueError(f"{n} files but {len(first)} starts and {len(last)} ends")
    return [_Job(os.fspath(f), s, e) for f, s, e in zip(files, first, last, strict=True)]


def _buffered(ahead: Iterable[Future[_Prepared | _FileResult]]) -> int:
    """Samples held by the jobs already read and cut, waiting for the model."""
    total = 0
    for future in ahead:
        if future.done() and future.exception() is None:
            item = future.result()
            total += sum(len(w) for w in item.waves) if isinstance(item, _Prepared) else 0
    return total


def _rows_of(result: _FileResult) -> list[dict[str, Any]]:
    if result.error is None:
        return result.rows
    return [{"file": result.file, "start": 0.0, "end": np.nan, ERROR_COLUMN: result.error}]


def _seconds(value: Any) -> float | None:
    """Seconds from a number, a timedelta or NaT/None/NaN (None)."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, (str, pd.Timedelta, np.timedelta64)) or hasattr(value, "total_seconds"):
        return float(pd.Timedelta(value).total_seconds())
    return float(value)


def _tick(seconds: float) -> float:
    """Times to 100 ns: sample-exact at 16 kHz, and the live monitor's rounded times where both exist."""
    return round(float(seconds), 7)


def _message(exc: BaseException) -> str:
    """An error for the table: the reader's own messages as they are, anything else with its type."""
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, AudioInputError) else f"{type(exc).__name__}: {text}"


def _checked_baseline(baseline: SpeakerBaseline | None, model_id: str, model: EmotionModel) -> SpeakerBaseline | None:
    if baseline is None:
        return None
    if baseline.model_id != model_id:
        raise ValueError(f"the baseline was enrolled with model {baseline.model_id}, not {model_id}; enrol again "
                         "with this model")
    if model.normalizer.mode != "enrolment":
        warnings.warn(f"model {model_id} uses {model.normalizer.mode!r} normalisation; the enrolment baseline "
                      "changes nothing", stacklevel=3)
    return baseline


def _attributor(patient: str, clinician: str | None, db: PathLike | None, device: str,
                speaker_encoder: str) -> SpeakerAttributor | None:
    """The live monitor's attribution for this patient (and clinician), or None when no voiceprint is stored."""
    from monitor.history.store import open_existing
    from monitor.options import stored_attributor

    with open_existing(None if db is None else os.fspath(db)) as store:
        return stored_attributor(store, patient, clinician, speaker_encoder, device, count="all")


def _attributor_from(voiceprints: tuple[Any, Any], device: str) -> SpeakerAttributor:
    from monitor.model.speaker_encoders import choice_for
    from monitor.options import speaker_encoder

    return SpeakerAttributor(speaker_encoder(choice_for(voiceprints[0].encoder), device), voiceprints[0],
                             voiceprints[1])


def _patient_baseline(patient: str, model_id: str, db: PathLike | None) -> SpeakerBaseline:
    from monitor.history.store import open_existing

    with open_existing(None if db is None else os.fspath(db)) as store:
        baseline = store.current_baseline(patient, model_id)
    if baseline is None:
        raise LookupError(f"patient {patient!r} has no enrolment baseline for model {model_id}; enrol them first "
                          "(mood-monitor --patient ID --enroll FILE)")
    return baseline


# ---- worker processes (num_workers > 1) -----------------------------------------------------------
_WORKER: MoodModel | None = None


def _worker_init(state: _WorkerState) -> None:
    """Runs once in each spawned process: its own model, one share of the CPU, Ctrl-C left to the parent."""
    global _WORKER
    import torch

    signals.signal(signals.SIGINT, signals.SIG_IGN)
    torch.set_num_threads(state.threads)
    _WORKER = _model_from(state)


def _model_from(state: _WorkerState) -> MoodModel:
    """A worker's own model, as the parent's: same bundle, baseline, segmentation and voiceprints."""
    model = MoodModel(load_bundle(state.bundle_path), device=state.device, precision=state.precision,
                      vad=state.vad, batch_size=state.batch_size, progress=False)
    model.baseline = state.baseline
    if state.voiceprints is not None:
        model.speakers = _attributor_from(state.voiceprints, state.device)
    return model


def _worker_run(jobs: list[_Job], segment: bool, errors: Errors) -> list[_FileResult]:
    if _WORKER is None:
        raise RuntimeError("the worker process was not initialised")
    return list(_WORKER._results_here(jobs, segment, errors))


# ---- Ray Data workers (ray=...) --------------------------------------------------------------------
def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _none_if_nan(value: Any) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


class _RayScorer:
    """A Ray Data worker: its own model (as a worker process has), scoring one batch of files at a time.

    Each file's result travels back as JSON text (rows of numbers and labels; NaN kept), so that the
    driver rebuilds exactly the rows a local run gives.
    """

    def __init__(self, state: _WorkerState, segment: bool, errors: Errors) -> None:
        import torch

        if state.device == "cpu":
            torch.set_num_threads(state.threads)
        self.model = _model_from(state)
        self.segment, self.errors = segment, errors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [_Job(str(f), _none_if_nan(s), _none_if_nan(e), path=str(p))
                for f, p, s, e in zip(batch["file"], batch["path"], batch["start"], batch["end"], strict=True)]
        results = list(self.model._results_here(jobs, self.segment, self.errors))
        text = [json.dumps({"file": r.file, "rows": r.rows, "error": r.error}) for r in results]
        return {"order": np.asarray(batch["order"]), "result": np.asarray(text, dtype=object)}
