"""``mood-monitor data``: look after the stored sessions (list, export, assign, delete, check)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from monitor.history.store import Store, StoreError, open_existing
from monitor.history.target import add_db_argument
from monitor.live.private import open_private, private_dir, write_private_text

DESCRIPTION = """\
Manage what the monitor stored: which patients and sessions exist, a
patient's complete data as CSV or JSON, giving an unassigned session to a
patient, and deleting a patient's (or a session's) data for good.

Patients are pseudonymous ids (whatever was passed to --patient). Sessions
recorded without --patient are "unassigned" until `assign` gives them to one.

examples:
  mood-monitor data patients
  mood-monitor data sessions --patient P017
  mood-monitor data sessions --unassigned
  mood-monitor data assign --session 20240301T101500Z-3fa2c1 --patient P017
  mood-monitor data export --patient P017 --out p017/          # CSV files in a folder
  mood-monitor data export --patient P017 --out p017.json      # one JSON document
  mood-monitor data delete --patient P017 --yes                # everything about P017, no undo
  mood-monitor data --db /elsewhere/mood.sqlite check
  mood-monitor data --db postgresql://monitor@db.clinic/mood patients   # a clinic's PostgreSQL store
"""


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


# ---- commands -----------------------------------------------------------------------------
def cmd_patients(store: Store, args: argparse.Namespace) -> int:
    patients = store.patients()
    if args.json:
        print(json.dumps([p.to_dict() for p in patients], indent=1))
        return 0
    if not patients:
        print(f"no patients in {store.path}")
        return 0
    _print_table([[p.patient_id if p.patient_id is not None else "(unassigned)", str(p.sessions), str(p.points),
                   _when(p.first_session), _when(p.last_session)] for p in patients],
                 ["patient", "sessions", "points", "first session", "last session"])
    return 0


def cmd_sessions(store: Store, args: argparse.Namespace) -> int:
    rows = store.sessions(args.patient, unassigned=args.unassigned)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
        return 0
    if not rows:
        print("no sessions")
        return 0
    _print_table([[r.session_id, r.patient_id or "(unassigned)", _when(r.started_at),
                   f"{r.minutes:.1f}" if r.minutes is not None else "-",
                   str(r.points), f"{r.speech_seconds:.0f}", str(r.marks), r.end_state or "running",
                   r.calibration["label"], r.model_id]
                  for r in rows],
                 ["session", "patient", "started", "minutes", "points", "speech s", "marks", "ended", "calibration",
                  "model"])
    return 0


def patient_export(store: Store, patient_id: str | None) -> dict[str, Any]:
    """Everything stored about a patient (or, with None, the unassigned sessions) as one JSON-ready dict."""
    sessions = store.sessions(patient_id, unassigned=patient_id is None)
    out: dict[str, Any] = {
        "format": "mood-monitor-export",
        "format_version": 1,
        "schema_version": store.schema_version(),
        "patient": patient_id,
        "exported_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "baselines": store.baseline_history(patient_id) if patient_id is not None else [],
        "sessions": [],
    }
    for s in sessions:
        entry = s.to_dict()
        entry["points"] = store.point_records(s.session_id)
        entry["marks"] = store.mark_records(s.session_id)
        entry["audio"] = store.audio_records(s.session_id)
        entry["point_count"] = s.points
        out["sessions"].append(entry)
    return out


def write_csv_export(data: dict[str, Any], folder: Path) -> list[Path]:
    """sessions.csv, points.csv, marks.csv, baselines.csv in ``folder`` (times as unix seconds and ISO).

    Clinical data: the files are owner-only (0600), a folder made here 0700, like the store.
    """
    private_dir(folder)
    files: list[Path] = []

    def iso(ts: float | None) -> str:
        return "" if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")

    def write(name: str, header: list[str], rows: list[list[Any]]) -> None:
        path = folder / name
        with open_private(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        files.append(path)

    sessions = data["sessions"]
    write("sessions.csv", ["session_id", "patient_id", "started_at", "started_at_iso", "ended_at", "ended_at_iso",
                           "end_state", "model_id", "model_version", "device", "source", "labels", "settings",
                           "points", "speech_seconds", "marks", "audio_seconds"],
          [[s["session_id"], s["patient_id"] or "", s["started_at"], iso(s["started_at"]), s["ended_at"],
            iso(s["ended_at"]), s["end_state"] or "", s["model_id"], s["model_version"], s["device"], s["source"],
            json.dumps(s["labels"]), json.dumps(s["settings"]), s["point_count"], s["speech_seconds"],
            len(s["marks"]), "" if s.get("audio_seconds") is None else s["audio_seconds"]] for s in sessions])
    write("points.csv", ["session_id", "index", "t_start", "t_end", "valence", "arousal", "confidence",
                         "probabilities", "latency_ms", "wall_time", "wall_time_iso"],
          [[s["session_id"], p["index"], p["t_start"], p["t_end"], p["valence"], p["arousal"], p["confidence"],
            json.dumps(p["probabilities"]), p["latency_ms"], p["wall_time"], iso(p["wall_time"])]
           for s in sessions for p in s["points"]])
    write("marks.csv", ["session_id", "t", "text", "wall_time", "wall_time_iso", "source"],
          [[s["session_id"], m["t"], m["text"], m["wall_time"], iso(m["wall_time"]), m["source"]]
           for s in sessions for m in s["marks"]])
    write("baselines.csv", ["model_id", "created_at", "created_at_iso", "replaced_at", "baseline"],
          [[b["model_id"], b["created_at"], iso(b["created_at"]), b["replaced_at"], json.dumps(b["baseline"])]
           for b in data["baselines"]])
    return files


def cmd_export(store: Store, args: argparse.Namespace) -> int:
    if args.patient is None and not args.unassigned:
        print("error: give --patient ID or --unassigned", file=sys.stderr)
        return 2
    if args.patient is not None and not store.has_patient(args.patient):
        print(f"error: no patient {args.patient!r} in {store.path}", file=sys.stderr)
        return 2
    data = patient_export(store, args.patient)
    out = Path(args.out)
    fmt = args.format or ("json" if out.suffix.lower() == ".json" else "csv")
    if fmt == "json":
        write_private_text(out, json.dumps(data, indent=1) + "\n")
        print(out)
    else:
        for path in write_csv_export(data, out):
            print(path)
    n = sum(len(s["points"]) for s in data["sessions"])
    print(f"exported {len(data['sessions'])} sessions, {n} points", file=sys.stderr)
    return 0


def cmd_assign(store: Store, args: argparse.Namespace) -> int:
    try:
        store.assign_session(args.session, args.patient)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"session {args.session} now belongs to {args.patient}")
    return 0


def cmd_delete(store: Store, args: argparse.Namespace) -> int:
    if args.patient is None and not args.session:
        print("error: give --patient ID or --session ID", file=sys.stderr)
        return 2
    if args.patient is not None:
        sessions = store.sessions(args.patient)
        what = f"patient {args.patient}: {len(sessions)} sessions, {sum(s.points for s in sessions)} points, baselines"
    else:
        sessions = [s for s in (store.session(sid) for sid in args.session) if s is not None]
        missing = set(args.session) - {s.session_id for s in sessions}
        if missing:
            print(f"error: no session {', '.join(sorted(missing))} in {store.path}", file=sys.stderr)
            return 2
        what = f"{len(sessions)} sessions, {sum(s.points for s in sessions)} points"
    if not args.yes:
        print(f"would delete {what} (and any kept audio) from {store.path}.\n"
              f"This cannot be undone; export first if needed. Add --yes to delete.", file=sys.stderr)
        return 1
    try:
        if args.patient is not None:
            n = store.delete_patient(args.patient)
        else:
            n = store.delete_sessions([s.session_id for s in sessions])
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"deleted {what} ({n} sessions)")
    return 0


def cmd_check(store: Store, args: argparse.Namespace) -> int:
    result = store.integrity_check()
    print(f"store {store.path}: schema version {store.schema_version()}, integrity {result}")
    for sid in store.recovered_sessions:
        print(f"closed session {sid}, which had ended abruptly (end set to its last point)")
    return 0 if result == "ok" else 1


# ---- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mood-monitor data", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db_argument(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("patients", help="list patients with their session and point counts")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_patients)

    s = sub.add_parser("sessions", help="list sessions (all, one patient's, or the unassigned ones)")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--patient", metavar="ID", help="only this patient's sessions")
    who.add_argument("--unassigned", action="store_true", help="only sessions recorded without --patient")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_sessions)

    s = sub.add_parser("export", help="write a patient's complete data as CSV files or one JSON file",
                       description="Write every session, point, mark and baseline of a patient. "
                                   "--out NAME.json writes one JSON document; any other --out is a folder "
                                   "that receives sessions.csv, points.csv, marks.csv and baselines.csv. "
                                   "Kept audio files are listed (JSON), not copied.")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--patient", metavar="ID", help="the patient to export")
    who.add_argument("--unassigned", action="store_true", help="the sessions recorded without --patient")
    s.add_argument("--out", required=True, metavar="PATH", help="a .json file, or a folder for CSV files")
    s.add_argument("--format", choices=["csv", "json"], help="override the choice made from --out")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("assign", help="give a session to a patient (e.g. one recorded without --patient)")
    s.add_argument("--session", required=True, metavar="SESSION_ID")
    s.add_argument("--patient", required=True, metavar="ID")
    s.set_defaults(func=cmd_assign)

    s = sub.add_parser("delete", help="delete a patient's data (or single sessions) for good; needs --yes",
                       description="Delete a patient's sessions, points, marks, kept audio and baselines, and the "
                                   "patient id itself; or only the sessions given with --session. Freed space is "
                                   "overwritten with zeros and the write-ahead log truncated (PostgreSQL: the tables "
                                   "are rewritten with VACUUM FULL), so the data does not linger in the store's "
                                   "files. Without --yes it only says what it would delete.")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--patient", metavar="ID", help="everything about this patient, the id included")
    who.add_argument("--session", nargs="+", metavar="SESSION_ID", help="only these sessions (see `sessions`)")
    s.add_argument("--yes", action="store_true", help="really delete (without it: only say what would go)")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("check", help="open the store (migrating it and closing abruptly ended sessions) and verify it")
    s.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        store = open_existing(args.db, args.data_dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with store:
        return int(args.func(store, args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
