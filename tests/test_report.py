"""The report: files are written at the promised size, are not blank, and show the JSON's numbers."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone

import numpy as np
import pytest

from monitor.history import report
from monitor.history.aggregate import build_history
from monitor.live.events import Point, SessionInfo
from monitor.history.store import Store

FROM, TO = "2024-03-01", "2024-03-10"


def ts(d: int, h: int = 10) -> float:
    return datetime(2024, 3, d, h, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "m.sqlite"
    rng = np.random.default_rng(3)
    with Store.open(path) as store:
        for k, (day, hour) in enumerate([(1, 10), (2, 9), (2, 15), (4, 10), (7, 11), (9, 10)]):
            sid = f"s{k}"
            store.begin_session(SessionInfo(session_id=sid, started_at=ts(day, hour), model_id="m@1+abc",
                                            model_version="1", device="cpu", labels=("a",), source="t",
                                            patient_id="P1"))
            t, points = 0.0, []
            for i in range(12):
                d = float(rng.uniform(1, 4))
                points.append(Point(i, t, t + d, float(np.clip(rng.normal(0.4 - 0.1 * day, 0.3), -1, 1)),
                                    float(np.clip(rng.normal(0.1, 0.3), -1, 1)), float(rng.uniform(0.4, 1)), {},
                                    5.0, ts(day, hour) + t + d))
                t += d + 1
            store.add_points(sid, points)
            if k != 4:  # one session was never closed: the table says so
                store.end_session(sid, ts(day, hour) + t)
    return path


def history(db, **kw):
    with Store.open(db, recover=False) as store:
        return build_history(store, "P1", date.fromisoformat(FROM), date.fromisoformat(TO), tz="UTC", weeks=True,
                             session_detail=True, overall=True, **kw)


def test_cli_writes_png_pdf_json(db, tmp_path, capsys):
    from PIL import Image

    png, pdf, js = tmp_path / "r.png", tmp_path / "r.pdf", tmp_path / "r.json"
    code = report.main(["--db", str(db), "--patient", "P1", "--from", FROM, "--to", TO, "--tz", "UTC",
                        "--out", str(png), "--out", str(pdf), "--out", str(js)])
    assert code == 0
    data = json.loads(js.read_text())
    expected = history(db)
    expected["by"] = "day"
    assert data == json.loads(json.dumps(expected))  # the JSON is the aggregation, untouched

    width, height = report.figure_size(data, "day")
    with Image.open(png) as im:
        assert im.size == (round(width * report.DPI), round(height * report.DPI))
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    not_white = (pixels < 245).any(axis=2).mean()
    assert 0.05 < not_white < 0.9  # drawn on, but not a solid block
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > 100  # heat maps, not just text and lines

    raw = pdf.read_bytes()
    assert raw.startswith(b"%PDF")
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", raw)
    assert box
    assert float(box.group(1)) == pytest.approx(width * 72) and float(box.group(2)) == pytest.approx(height * 72)


def test_the_figure_shows_the_json_numbers(db):
    data = history(db)
    fig = report.render(data, by="day")
    artists = {a.get_gid(): a for ax in fig.axes for a in ax.get_children() if a.get_gid()}

    for metric in ("mean_valence", "mean_arousal", "intensity"):
        drawn = artists[metric].get_ydata()
        stored = [d["metrics"][metric]["mean"] for d in data["days"] if d["metrics"]["points"]]
        assert list(drawn) == pytest.approx(stored)
    for metric in ("dispersion", "entropy"):
        stored = [d["metrics"][metric] for d in data["days"] if d["metrics"]["points"]]
        assert list(artists[metric].get_ydata()) == pytest.approx(stored)
    minutes = artists["speech_minutes"].get_ydata()
    spoken = [d["metrics"]["speech_seconds"] / 60 for d in data["days"] if d["metrics"]["points"]]
    assert list(minutes) == pytest.approx(spoken)

    for day in data["days"]:
        image = artists.get(f"heatmap:{day['date']}")
        if not day["metrics"]["points"]:
            assert image is None
            continue
        shown = image.get_array()
        np.testing.assert_allclose(np.ma.filled(shown, 0.0)[~np.ma.getmaskarray(shown)],
                                   np.asarray(day["heatmap"]["grid"])[~np.ma.getmaskarray(shown)])
        assert image.get_clim() == (0.0, data["scale_max"])  # one colour scale

    table = artists["sessions"]
    cells = table.get_celld()
    rows = max(r for r, _ in cells)
    assert rows == len(data["sessions"]) == 6
    for r, s in enumerate(data["sessions"], start=1):
        text = [cells[r, c].get_text().get_text() for c in range(len(report.TABLE_COLUMNS))]
        assert text[0] == s["date"] and text[3] == str(s["points"])
        assert text[4] == f"{s['speech_seconds']:.1f}"
        assert text[5] == f"{s['mean_valence']:+.2f}" and text[6] == f"{s['mean_arousal']:+.2f}"
    states = [cells[r, 7].get_text().get_text() for r in range(1, rows + 1)]
    assert states.count("running") == 1 and states.count("ok") == 5


def test_weekly_panels(db):
    data = history(db)
    fig = report.render(data, by="week")
    images = [a for ax in fig.axes for a in ax.get_images()]
    assert len(images) == sum(1 for w in data["weeks"] if w["metrics"]["points"]) == 2
    assert [w["week"] for w in data["weeks"]] == ["2024-W09", "2024-W10"]
    assert fig.get_size_inches()[1] == pytest.approx(report.figure_size(data, "week")[1])


def test_cli_errors(db, tmp_path, capsys):
    assert report.main(["--db", str(db), "--patient", "NOBODY", "--out", str(tmp_path / "x.json")]) == 2
    assert "no patient" in capsys.readouterr().err
    missing = tmp_path / "none.sqlite"
    assert report.main(["--db", str(missing), "--patient", "P1", "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(SystemExit):
        report.main(["--db", str(db), "--patient", "P1", "--out", str(tmp_path / "x.txt")])
    with pytest.raises(SystemExit):
        report.main(["--db", str(db), "--patient", "P1", "--from", "2024-03-10", "--to", "2024-03-01",
                     "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit) as exc:
        report.main(["--help"])
    assert exc.value.code == 0 and "--days" in capsys.readouterr().out
