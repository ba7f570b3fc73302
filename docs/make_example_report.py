#!/usr/bin/env python3
"""Regenerate docs/example_report.png and .json: RAVDESS clips replayed as two weeks of sessions.

Each simulated session is a handful of one actor's RAVDESS clips joined with
short pauses and replayed through the real live code path (FileSource ->
MonitorPipeline -> StoreSink, as fast as possible), then moved to its
simulated date with ``Store.retime_session``. The mix of emotions drifts over
the fortnight, from mostly happy/calm/surprised speech towards sad, fearful and
flat speech, the kind of change the report is meant to show. Whether the
heat maps show it depends on the model: with the eGeMAPS *test* bundle (random
weights, used when no trained model is available) the points mean nothing.

    python docs/make_example_report.py                         # shipped model if present, else a test bundle
    python docs/make_example_report.py --model path/to/bundle  # any model bundle
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from calibration.data import RAVDESS_EMOTIONS
from monitor.audio.sources import FileSource
from monitor.history import report
from monitor.history.aggregate import build_history
from monitor.history.sink import StoreSink
from monitor.history.store import Store
from monitor.live.events import SessionInfo
from monitor.live.pipeline import MonitorConfig, MonitorPipeline
from monitor.live.projection import Projector
from monitor.model.bundle import default_bundle_path, load_bundle

REPO = Path(__file__).resolve().parents[1]

# Relative weight of each emotion at the start and the end of the fortnight (linear in between).
EARLY = {"happy": 4, "calm": 3, "surprised": 2, "neutral": 2, "angry": 1, "sad": 0.3, "fearful": 0.3, "disgust": 0.3}
LATE = {"happy": 0.3, "calm": 1, "surprised": 0.3, "neutral": 3, "angry": 0.5, "sad": 4, "fearful": 2, "disgust": 1}
# (day of the fortnight, hour): two to three sessions a week, like a therapy schedule with check-ins.
SCHEDULE = [(0, 10), (1, 16), (3, 10), (4, 11), (6, 9), (7, 10), (9, 15), (10, 10), (12, 11), (13, 10)]
CLIPS_PER_SESSION = 10
PATIENT = "DEMO-01"


def default_ravdess() -> Path:
    root = Path(os.environ.get("MOOD_MONITOR_DATA", REPO.parent / "shared" / "data"))
    return root / "ravdess"


def pick_clips(clips: dict[str, list[Path]], progress: float, rng: np.random.Generator) -> list[Path]:
    names = sorted(clips)
    weights = np.array([(1 - progress) * EARLY.get(n, 0) + progress * LATE.get(n, 0) for n in names], dtype=float)
    weights /= weights.sum()
    chosen = rng.choice(len(names), size=CLIPS_PER_SESSION, p=weights)
    return [clips[names[i]][rng.integers(len(clips[names[i]]))] for i in chosen]


def join(paths: list[Path], out: Path, gap_s: float = 0.9) -> Path:
    parts, rate = [], None
    for path in paths:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        rate = rate or sr
        if sr != rate:
            raise SystemExit(f"{path} has rate {sr}, the others {rate}")
        parts += [audio.mean(axis=1), np.zeros(int(gap_s * sr), dtype=np.float32)]
    sf.write(out, np.concatenate(parts), rate)
    return out


def model_folder(arg: str | None, work: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), "the model bundle given with --model"
    if (default_bundle_path() / "bundle.json").is_file():
        return default_bundle_path(), "the shipped default model"
    # The test bundle builder lives with the tests, which are not an installed package: load that one file.
    spec = importlib.util.spec_from_file_location("_test_bundles", REPO / "tests" / "bundles.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {REPO / 'tests' / 'bundles.py'}; give --model")
    bundles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundles)
    logging.info("no shipped model yet: building the eGeMAPS test bundle (random head; about a minute)")
    return (bundles.egemaps_bundle(work / "test_bundle"),
            "the eGeMAPS test bundle (random weights: the points are not meaningful)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ravdess", type=Path, default=default_ravdess(), help="RAVDESS folder (Actor_01 ... Actor_24)")
    p.add_argument("--actor", default="01", help="which actor speaks for the simulated patient (default: 01)")
    p.add_argument("--model", help="model bundle folder (default: the shipped model, else the eGeMAPS test bundle)")
    p.add_argument("--first-day", default="2024-03-04", help="date of the first simulated day (default: 2024-03-04)")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs", help="where example_report.png/.json go")
    p.add_argument("--db", type=Path, help="keep the store here (default: a temporary file)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("monitor.history.schema").setLevel(logging.ERROR)  # no "created the store" chatter

    actor_dir = args.ravdess / f"Actor_{int(args.actor):02d}"
    clips: dict[str, list[Path]] = {}
    for path in sorted(actor_dir.glob("*.wav")):
        clips.setdefault(RAVDESS_EMOTIONS[path.stem.split("-")[2]], []).append(path)
    if not clips:
        raise SystemExit(f"no RAVDESS clips in {actor_dir}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, model_note = model_folder(args.model, work)
        bundle = load_bundle(folder)
        model = bundle.build_model(device="cpu", precision="fp32")
        projector = Projector(bundle.reducer, bundle.labels)
        db = args.db or work / "example.sqlite"
        if db.exists():
            raise SystemExit(f"{db} exists; give a new --db")
        store = Store.open(db)
        rng = np.random.default_rng(args.seed)
        first = date.fromisoformat(args.first_day)
        config = MonitorConfig()
        for n, (day, hour) in enumerate(tqdm(SCHEDULE, desc="sessions", unit="session")):
            wav = join(pick_clips(clips, day / 13.0, rng), work / f"session{n}.wav")
            source = FileSource(wav, frame_ms=config.vad.frame_ms, realtime=False)
            simulated = datetime.combine(first + timedelta(days=day), datetime.min.time().replace(hour=hour),
                                         tzinfo=timezone.utc)
            session = SessionInfo(session_id=simulated.strftime("%Y%m%dT%H%M%SZ") + f"-demo{n:02d}",
                                  started_at=time.time(), model_id=bundle.model_id,
                                  model_version=bundle.version, device="cpu", labels=tuple(bundle.labels),
                                  source=f"file:ravdess-actor{int(args.actor):02d}-session{n}.wav",
                                  patient_id=PATIENT, settings=config.to_dict())
            sink = StoreSink(store, patient_id=PATIENT)
            summary = MonitorPipeline(source, model, projector, sinks=[sink], config=config, session=session).run()
            if summary.error or sink.dropped_points:
                raise SystemExit(f"session {n} failed: {summary.error or f'{sink.dropped_points} points dropped'}")
            # replayed in seconds, dated as if it had been live on the simulated day
            store.retime_session(session.session_id, simulated.timestamp(), as_live=True,
                                 duration=summary.audio_seconds)
        history = build_history(store, PATIENT, first, first + timedelta(days=13), tz="UTC", weeks=True,
                                session_detail=True, overall=True)
        history["by"] = "day"
        history["example"] = {
            "what": f"{len(SCHEDULE)} sessions of RAVDESS actor {int(args.actor):02d}'s acted clips "
                    f"({CLIPS_PER_SESSION} per session), replayed through the live pipeline and dated over two weeks; "
                    "the mix drifts from happy/calm/surprised towards sad/fearful/neutral speech",
            "model": model_note,
            "model_id": bundle.model_id,
            "regenerate": "python docs/make_example_report.py",
        }
        title = f"Example: simulated patient {PATIENT} ({model_note})"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".png", ".json"):
            print(report.write(history, args.out_dir / f"example_report{suffix}", by="day", title=title))
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
