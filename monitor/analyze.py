"""``mood-monitor analyze``: score many recordings into one table (CSV, Parquet or JSONL), resumably.

    mood-monitor analyze recordings/ --out results.csv             # every audio file under recordings/
    mood-monitor analyze a.wav b.flac --out results.parquet --no-segment --jobs 2
    mood-monitor analyze recordings/ --out results.csv --jobs 8 --ray auto   # Ray Data workers on a cluster

One process loads the model once and goes through every file (``MoodModel``
in ``monitor.api``); rows are saved as files finish, so a batch that is
stopped (Ctrl-C, a crash) continues where it was when the same command is run
again: files already in ``--out`` are skipped. A file that cannot be read or
scored gets one row with its ``error`` and the batch goes on. Exit status: 0
when the batch ran to its end (per-file errors are counted in the last line),
1 when it stopped part way for a reason that is not one file's (what was done
is kept), 2 for a problem found before it started, 130 when interrupted. The
table's columns are described in docs/api.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from monitor.history.target import DB_HELP, add_db_argument
from monitor.live.private import open_private
from monitor.live.ray_pool import INSTALL_HINT, add_ray_address_argument

if TYPE_CHECKING:  # pandas and the model load only once the arguments are good, so --help is quick
    import pandas as pd

    from monitor.api import MoodModel

log = logging.getLogger("monitor.analyze")

EXIT_OK, EXIT_STOPPED, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130
FORMATS = (".csv", ".parquet", ".jsonl")
#: Columns of the saved table besides the model's value columns (``MoodModel.columns``): where, error, which model.
KEY_COLUMNS = ("file", "start", "end")
ERROR_COLUMN = "error"
MODEL_COLUMN = "model"
#: Save at least this often (files, seconds), so an interrupted batch loses little.
FLUSH_FILES, FLUSH_SECONDS = 32, 10.0

DESCRIPTION = """\
Score recordings with the monitor's model: valence, arousal, confidence and
every class probability, one row per speech segment (or per file with
--no-segment), into one table. Folders are searched recursively for audio
files. Run the same command again to continue an interrupted batch: files
already in --out are skipped. A file that fails gets a row with its error;
the others go on.

examples:
  mood-monitor analyze recordings/ --out results.csv
  mood-monitor analyze day1/ day2/ extra.flac --out results.parquet --jobs 2
  mood-monitor analyze clips/ --out files.jsonl --no-segment --model org/name
  mood-monitor analyze recordings/ --out results.csv --jobs 8 --ray auto
"""


class SetupError(Exception):
    """A problem found before the batch starts (exit 2, message on stderr)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mood-monitor analyze", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, and folders to search for audio files")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the results table: .csv, .parquet or .jsonl (created private to you; an existing one is "
                        "continued: the files already in it are skipped)")
    p.add_argument("--segment", action=argparse.BooleanOptionalAction, default=True,
                   help="one row per speech segment, cut as the live monitor cuts speech (default); --no-segment: "
                        "one row per file, the whole file as one segment")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="worker processes, each with its own copy of the model (default: 1); with --ray: Ray Data "
                        "workers, one CPU (or one GPU, where the cluster has GPUs) each")
    add_ray_address_argument(p, help=(
        "fan the files out with Ray Data over --jobs workers: 'auto' joins the Ray cluster this machine belongs to "
        "(ray start), ray://HOST:10001 connects as a client, no value starts Ray on this machine; the table and "
        f"resuming are as without it. Give it after the paths or with a value ({INSTALL_HINT})"))
    p.add_argument("--pattern", default="**/*", metavar="GLOB",
                   help="which files to take inside folders (default: **/*, every audio file at any depth)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")

    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="BUNDLE", default="default",
                       help="a shipped model by name, a bundle folder, or a Hugging Face Hub repo id (default: the "
                            "shipped default)")
    model.add_argument("--compute", default="auto", metavar="DEV", help="auto, cpu, cuda, cuda:1 (default: auto)")
    model.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                       help="(default: auto)")
    model.add_argument("--batch-size", type=int, default=16, metavar="N",
                       help="segments embedded together (default: 16)")

    enrol = p.add_argument_group("speaker calibration (models trained with enrolment)")
    enrol.add_argument("--baseline", metavar="FILE",
                       help="the speaker's enrolment: a baseline JSON file, or a recording of calm speech to enrol "
                            "from; applied to every file")
    enrol.add_argument("--patient", metavar="ID", help="use this patient's stored enrolment baseline")
    add_db_argument(enrol, data_dir=False, help=f"the store holding --patient: {DB_HELP}")

    vad = p.add_argument_group("speech segmentation (as the live monitor's; see mood-monitor --help)")
    vad.add_argument("--vad-aggressiveness", type=int, default=2, choices=[0, 1, 2, 3], help="(default: 2)")
    vad.add_argument("--min-segment", type=float, default=0.5, metavar="S", help="(default: 0.5 s)")
    vad.add_argument("--max-segment", type=float, default=6.0, metavar="S", help="(default: 6 s)")
    vad.add_argument("--speech-gate", choices=["on", "off"], default="on",
                     help="drop segments that are not a speaking voice (tones, hum, music, noise) (default: on)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        parser.error(f"--out must end in {', '.join(FORMATS)} (got {out.name!r})")
    if args.jobs < 1 or args.batch_size < 1:
        parser.error("--jobs and --batch-size must be at least 1")
    if args.baseline and args.patient:
        parser.error("give either --baseline or --patient, not both")
    try:
        files = collect_inputs(args.paths, args.pattern)
        results = ResultsFile(out)
        done = results.files_done()
        todo = [f for f in files if os.path.abspath(f) not in done]
        if not todo:  # before loading the model: a finished batch answers at once
            print(f"all {len(files)} files are already in {out}; nothing to do", file=sys.stderr)
            return EXIT_OK
        model = _load_model(args)
        results.check(model.model_id, model.columns)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    skipped = len(files) - len(todo)
    if skipped:
        print(f"continuing {out}: {skipped} of {len(files)} files are already in it", file=sys.stderr)
    return _run(model, todo, results, args, skipped)


def collect_inputs(paths: Sequence[str], pattern: str) -> list[str]:
    """The files to score: files as given, folders searched with ``pattern``; each once, in the order given."""
    from monitor.api import find_audio

    files: list[str] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                found = [str(p) for p in find_audio(path, pattern)]
            except FileNotFoundError as exc:
                raise SetupError(str(exc)) from exc
        elif path.exists():
            found = [str(path)]
        else:
            raise SetupError(f"no such file or folder: {raw}")
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files


def _load_model(args: argparse.Namespace) -> MoodModel:
    from monitor.api import MoodModel
    from monitor.audio.io import AudioInputError
    from monitor.audio.segmenter import VadConfig
    from monitor.model.base import BackboneLoadError
    from monitor.model.bundle import BundleError

    try:
        vad = VadConfig(aggressiveness=args.vad_aggressiveness, min_segment_s=args.min_segment,
                        max_segment_s=args.max_segment, speech_gate=args.speech_gate == "on")
        return MoodModel.from_pretrained(args.model, device=args.compute, precision=args.precision,
                                         baseline=args.baseline, patient=args.patient, db=args.db, vad=vad,
                                         batch_size=args.batch_size, num_workers=args.jobs,
                                         progress=not args.no_progress, ray=args.ray)
    except (AudioInputError, BundleError, BackboneLoadError, LookupError, RuntimeError, ValueError,
            OSError) as exc:
        raise SetupError(str(exc)) from exc


def _run(model: MoodModel, todo: list[str], results: ResultsFile, args: argparse.Namespace, skipped: int) -> int:
    import pandas as pd

    started = time.monotonic()
    pending: list[pd.DataFrame] = []
    last_flush = started
    counts = {"files": 0, "segments": 0, "failed": 0, "no_speech": 0}
    failures: list[str] = []
    interrupted, stopped = False, None
    try:
        for table in model.iter_files(todo, segment=args.segment, errors="report"):
            flat = flatten(table, model.model_id)
            _count(flat, counts, failures)
            pending.append(flat)
            if len(pending) >= FLUSH_FILES or time.monotonic() - last_flush >= FLUSH_SECONDS:
                results.append(pd.concat(pending, ignore_index=True))
                pending, last_flush = [], time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # noqa: BLE001 - not one file's fault (a worker process died, the disk is full)
        stopped = f"{type(exc).__name__}: {exc}"
    finally:
        if pending:
            results.append(pd.concat(pending, ignore_index=True))
    seconds = time.monotonic() - started
    for line in failures[:10]:
        print(f"failed: {line}", file=sys.stderr)
    if len(failures) > 10:
        print(f"failed: ... and {len(failures) - 10} more (see the {ERROR_COLUMN} column)", file=sys.stderr)
    if stopped:
        print(f"error: the batch stopped: {stopped}", file=sys.stderr)
    ended = interrupted or stopped
    print(f"{'stopped after' if ended else 'analyzed'} {counts['files']} files "
          f"({counts['segments']} segments) in {seconds:.1f} s: {counts['failed']} failed, "
          f"{counts['no_speech']} without speech, {skipped} already there; results in {results.path}"
          + ("; run the same command again to continue" if ended else ""), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_STOPPED if stopped else EXIT_OK


def _count(flat: pd.DataFrame, counts: dict[str, int], failures: list[str]) -> None:
    counts["files"] += 1
    errors = flat[ERROR_COLUMN].dropna()
    if len(errors):
        counts["failed"] += 1
        failures.append(f"{flat['file'].iloc[0]}: {errors.iloc[0]}")
    elif flat["valence"].isna().all():
        counts["no_speech"] += 1
    else:
        counts["segments"] += len(flat)


# ---- the table on disk ----------------------------------------------------------------------------
def flatten(table: pd.DataFrame, model_id: str) -> pd.DataFrame:
    """A result table (audformat index) -> the saved layout: file, start and end in seconds, values, error, model."""
    flat = table.reset_index()
    flat["file"] = flat["file"].astype("string")
    for key in ("start", "end"):
        flat[key] = flat[key].dt.total_seconds().astype("float64")
    if ERROR_COLUMN not in flat:
        flat[ERROR_COLUMN] = None
    flat[ERROR_COLUMN] = flat[ERROR_COLUMN].astype("string")
    flat[MODEL_COLUMN] = model_id
    flat[MODEL_COLUMN] = flat[MODEL_COLUMN].astype("string")
    return flat


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A table ``mood-monitor analyze`` wrote, back on the API's index (file, start, end as timedeltas)."""
    import pandas as pd

    from monitor.api import rows_to_frame

    flat = read_flat(Path(path))
    columns = [c for c in flat.columns if c not in KEY_COLUMNS]
    rows = flat.to_dict("records")
    table = rows_to_frame(rows, [c for c in columns if c not in (ERROR_COLUMN, MODEL_COLUMN)] + [ERROR_COLUMN])
    table[MODEL_COLUMN] = pd.array(flat[MODEL_COLUMN].tolist(), dtype="string")
    return table


def read_flat(path: Path) -> pd.DataFrame:
    """The saved layout as it is on disk (a torn last line, from a crash, is left out)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        flat = pd.read_parquet(path)
    elif suffix == ".csv":
        text = _complete_lines(path)
        if not text.strip():
            return pd.DataFrame(columns=list(KEY_COLUMNS))
        flat = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""],
                           dtype={"file": "string", ERROR_COLUMN: "string", MODEL_COLUMN: "string"})
    else:
        records = [json.loads(line) for line in _complete_lines(path).splitlines() if line.strip()]
        flat = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(KEY_COLUMNS))
    for column in flat.columns:
        if column in ("file", ERROR_COLUMN, MODEL_COLUMN):
            flat[column] = flat[column].astype("string")
        else:
            flat[column] = pd.to_numeric(flat[column], errors="coerce").astype("float64")
    return flat


def _complete_lines(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]


class ResultsFile:
    """The --out table: read once to resume, then appended to (CSV, JSONL) or rewritten whole (Parquet).

    Written private to the user (0600): results are clinical data. A CSV or
    JSONL append is one write per batch of finished files; a Parquet file is
    replaced atomically. A torn last line (a crash mid-write) is cut off
    before appending, together with the rest of that file's rows, which are
    then scored again.
    """

    def __init__(self, path: Path):
        self.path = path
        self.format = path.suffix.lower()
        self.existing: pd.DataFrame | None = None
        self.columns: list[str] = []
        if path.is_dir():
            raise SetupError(f"--out {path} is a folder")
        if path.exists() and path.stat().st_size > 0:
            if self.format != ".parquet":
                self._repair_tail()
            try:
                self.existing = read_flat(path)
            except Exception as exc:  # noqa: BLE001 - any reader failure means: not a table we can continue
                raise SetupError(f"cannot continue {path}: it is not a results table this program can read "
                                 f"({exc}); give another --out") from exc

    def check(self, model_id: str, columns: Sequence[str]) -> None:
        """Set the layout; refuse to mix another model's (or another layout's) rows into an existing table."""
        self.columns = [*KEY_COLUMNS, *columns, ERROR_COLUMN, MODEL_COLUMN]
        if self.existing is None or self.existing.empty:
            return
        if list(self.existing.columns) != self.columns:
            raise SetupError(f"{self.path} has the columns {list(self.existing.columns)}, not this model's "
                             f"{self.columns}; give another --out")
        models = set(self.existing[MODEL_COLUMN].dropna().unique())
        if models - {model_id}:
            raise SetupError(f"{self.path} holds results of model {', '.join(sorted(models))}, not {model_id}; "
                             "give another --out")

    def files_done(self) -> set[str]:
        if self.existing is None or self.existing.empty:
            return set()
        return {os.path.abspath(f) for f in self.existing["file"].dropna().unique()}

    def append(self, flat: pd.DataFrame) -> None:
        import pandas as pd

        flat = flat[self.columns]
        if self.format == ".parquet":
            whole = flat if self.existing is None or self.existing.empty else pd.concat(
                [self.existing, flat], ignore_index=True)
            self._replace(whole)
            self.existing = whole
            return
        if self.format == ".csv":
            new = not self.path.exists() or self.path.stat().st_size == 0
            text = flat.to_csv(index=False, header=new, lineterminator="\n")
        else:
            from calibration.jsonable import to_jsonable

            text = "".join(json.dumps(to_jsonable({k: (None if _missing(v) else v) for k, v in row.items()}),
                                      allow_nan=False) + "\n" for row in flat.to_dict("records"))
        with open_private(self.path, "ab") as handle:  # clinical data: 0600, like every output
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def _replace(self, whole: pd.DataFrame) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open_private(tmp, "wb") as handle:
                whole.to_parquet(handle, index=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _repair_tail(self) -> None:
        """Cut a torn last line and the other rows of the file it belonged to (they may be incomplete)."""
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        lines = data.split(b"\n")
        torn = lines.pop()
        first_row = 1 if self.format == ".csv" else 0  # a CSV keeps its header
        owner = _line_file(torn, self.format)
        if owner is None and len(lines) > first_row:  # cut inside the name: take the last complete file instead
            owner = _line_file(lines[-1], self.format)
        while len(lines) > first_row and _line_file(lines[-1], self.format) == owner:
            lines.pop()
        keep = b"".join(line + b"\n" for line in lines)
        print(f"{self.path} ends in an incomplete line (an interrupted write): cutting it off, with the rest "
              "of that file's rows, to score it again", file=sys.stderr)
        with open(self.path, "r+b") as handle:
            handle.truncate(len(keep))


def _line_file(line: bytes, fmt: str) -> str | None:
    """The file a saved line belongs to; None when the line was cut before the name ended."""
    text = line.decode("utf-8", errors="replace")
    if fmt == ".jsonl":
        key = '{"file": '
        if not text.startswith(key):
            return None
        try:
            value, _ = json.JSONDecoder().raw_decode(text[len(key):])
        except json.JSONDecodeError:
            return None
        return str(value)
    import csv

    fields = next(csv.reader([text]), [])
    return fields[0] if len(fields) >= 2 else None  # a second field: the first one is complete


def _missing(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
