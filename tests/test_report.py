"""The report: files are written at the promised size, are not blank, and show the JSON's numbers."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone

import numpy as np
import pytest

from monitor.history import report
from monitor.history.aggregate import build_history
from monitor.live.events import Mark, Point, SessionInfo
from monitor.history.store import Store

FROM, TO = "2024-03-01", "2024-03-10"
MODEL = "egemaps-ravdess-emovo-jl@2+b06427b7c8-a-long-model-name"  # must not be cut short
A4_PT = (595.28, 841.89)
LETTER_PT = (612.0, 792.0)


def ts(d: int, h: int = 10) -> float:
    return datetime(2024, 3, d, h, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "m.sqlite"
    fill_store(path)
    return path


def fill_store(path) -> None:
    """Six sessions of P1 over nine days, two with marks, one never closed."""
    rng = np.random.default_rng(3)
    with Store.open(path) as store:
        for k, (day, hour) in enumerate([(1, 10), (2, 9), (2, 15), (4, 10), (7, 11), (9, 10)]):
            sid = f"s{k}"
            enrolled = {"normalization": "enrolment",
                        "speaker_baseline": {"source": "calm.wav", "created": 0.0, "seconds": 42.0}}
            store.begin_session(SessionInfo(session_id=sid, started_at=ts(day, hour), model_id=MODEL,
                                            model_version="1", device="cpu", labels=("a",), source="t",
                                            patient_id="P1", settings=enrolled if k < 3 else {}))
            t, points = 0.0, []
            for i in range(12):
                d = float(rng.uniform(1, 4))
                points.append(Point(i, t, t + d, float(np.clip(rng.normal(0.4 - 0.1 * day, 0.3), -1, 1)),
                                    float(np.clip(rng.normal(0.1, 0.3), -1, 1)), float(rng.uniform(0.4, 1)), {},
                                    5.0, ts(day, hour) + t + d))
                t += d + 1
            store.add_points(sid, points)
            if k in (1, 3):  # two sessions with marks: they must reach the time lines and the list
                store.write_batch(sid, marks=[Mark(20.0, f"mark {k}: topic changed", ts(day, hour) + 20.0),
                                              Mark(40.0, f"mark {k}b", ts(day, hour) + 40.0)])
            if k != 4:  # one session was never closed: the table says so
                store.end_session(sid, ts(day, hour) + t)


def history(db, **kw):
    with Store.open(db, recover=False) as store:
        return build_history(store, "P1", date.fromisoformat(FROM), date.fromisoformat(TO), tz="UTC", weeks=True,
                             session_detail=True, overall=True, **kw)


def pdf_pages(raw: bytes) -> list[tuple[float, float]]:
    """Each page's MediaBox (width, height) in points, read from the PDF's page objects."""
    assert raw.startswith(b"%PDF")
    pages = re.findall(rb"/Type /Page\b(?!s).*?/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", raw, re.S)
    if not pages:  # the MediaBox may come before /Type in a page dictionary
        pages = re.findall(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\].*?/Type /Page\b(?!s)", raw, re.S)
    assert len(re.findall(rb"/Type /Page\b(?!s)", raw)) == len(pages)
    return [(float(w), float(h)) for w, h in pages]


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

    n_pages = len(report.render_pages(data, "day"))
    sizes = pdf_pages(pdf.read_bytes())
    assert len(sizes) == n_pages >= 3  # paged: heat maps, time lines, sessions (not one huge page)
    for w, h in sizes:
        assert (w, h) == pytest.approx(A4_PT, abs=0.5)
    with Image.open(png) as im:
        assert im.size == report.png_size(n_pages)  # the same pages, stacked
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    not_white = (pixels < 245).any(axis=2).mean()
    assert 0.03 < not_white < 0.9  # drawn on, but not a solid block
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > 100  # heat maps, not just text and lines


def test_the_report_reads_the_same_from_postgresql(db, pg_url, tmp_path):
    """The same sessions written to PostgreSQL give the same report JSON as the SQLite file (same queries)."""
    fill_store(pg_url)
    outs = []
    for source, name in ((db, "lite.json"), (pg_url, "pg.json")):
        assert report.main(["--db", str(source), "--patient", "P1", "--from", FROM, "--to", TO, "--tz", "UTC",
                            "--out", str(tmp_path / name)]) == 0
        outs.append(json.loads((tmp_path / name).read_text()))
    assert outs[1] == outs[0] and outs[0]["sessions"]


def test_letter_paper(db, tmp_path):
    pdf = tmp_path / "r.pdf"
    assert report.main(["--db", str(db), "--patient", "P1", "--from", FROM, "--to", TO, "--tz", "UTC",
                        "--paper", "letter", "--out", str(pdf)]) == 0
    sizes = pdf_pages(pdf.read_bytes())
    assert len(sizes) >= 3 and all((w, h) == pytest.approx(LETTER_PT, abs=0.5) for w, h in sizes)


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and callable(a.get_text))
            if isinstance(t.get_text(), str)]


def test_marks_are_on_the_time_lines_and_listed(db):
    data = history(db)
    marks = [m for s in data["sessions"] for m in s["mark_list"]]
    assert len(marks) == 4
    pages = report.render_pages(data, "day")
    trends = pages[1]
    drawn = {a.get_gid() for ax in trends.axes for a in ax.get_lines() if (a.get_gid() or "").startswith("mark:")}
    assert drawn == {"mark:1", "mark:2", "mark:3", "mark:4"}
    import matplotlib.dates as mdates

    ax = next(ax for ax in trends.axes if any(a.get_gid() == "mark:1" for a in ax.get_lines()))
    line = next(a for a in ax.get_lines() if a.get_gid() == "mark:1")
    assert mdates.num2date(line.get_xdata()[0]).replace(tzinfo=None) == datetime(2024, 3, 2, 9, 0, 20)
    lo, hi = ax.get_xlim()
    assert all(lo < a.get_xdata()[0] < hi for a in ax.get_lines() if (a.get_gid() or "").startswith("mark:"))
    listed = " ".join(t for fig in pages for t in _texts(fig))
    for m in marks:
        assert m["text"] in listed


def test_every_line_has_a_legend_entry_and_quadrants_use_the_dashboard_words(db):
    from calibration.quadrants import QUADRANT_NAMES

    trends = report.render_pages(history(db), "day")[1]
    labels = set()
    for ax in trends.axes:
        if ax.get_legend():
            labels |= {t.get_text() for t in ax.get_legend().get_texts()}
    for ax in trends.axes:
        for line in ax.get_lines():
            if line.get_label().startswith("_"):
                assert line.get_gid().startswith("mark:") and int(line.get_gid()[5:]) > 1  # one entry for all marks
                continue
            assert line.get_label() in labels, line.get_label()
    assert "speech minutes" in labels and "mean valence: 95 % interval" in labels
    assert set(QUADRANT_NAMES.values()) <= labels  # "pleasant · high arousal", as on the dashboard


def test_heat_maps_use_the_dashboard_colours_and_words(db):
    from calibration.quadrants import AFFECT_WORDS

    first = report.render_pages(history(db), "day")[0]
    images = [a for ax in first.axes for a in ax.get_images()]
    assert images and all(im.get_cmap().name == "viridis" for im in images)
    tile = next(ax for ax in first.axes if ax.get_images())
    words = {t.get_text() for t in tile.texts if (t.get_gid() or "").startswith("word:")}
    assert words == {w for w, _ in AFFECT_WORDS}


def test_nothing_is_cut_off_the_page_and_the_model_name_is_whole(db):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pages = report.render_pages(history(db), "day")
    for fig in pages:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        for artist in [*fig.axes, *fig.texts]:
            box = artist.get_window_extent(renderer) if not hasattr(artist, "get_tightbbox") else \
                artist.get_tightbbox(renderer)
            if box is None:
                continue
            assert box.x0 >= -1 and box.x1 <= width + 1 and box.y0 >= -1 and box.y1 <= height + 1, artist
    assert any(MODEL in t for fig in pages for t in _texts(fig))


def test_sessions_on_one_day_draw_one_tile(tmp_path):
    path = tmp_path / "one.sqlite"
    with Store.open(path) as store:
        for k, hour in enumerate((9, 14)):
            sid = f"d{k}"
            store.begin_session(SessionInfo(session_id=sid, started_at=ts(5, hour), model_id=MODEL, model_version="1",
                                            device="cpu", labels=("a",), source="t", patient_id="P1"))
            store.add_points(sid, [Point(i, 2.0 * i, 2.0 * i + 1.5, 0.3, -0.2, 0.8, {}, 5.0, ts(5, hour) + 2 * i)
                                   for i in range(5)])
            store.end_session(sid, ts(5, hour) + 20)
        data = build_history(store, "P1", date(2024, 3, 1), date(2024, 3, 14), tz="UTC", weeks=True,
                             session_detail=True, overall=True)
    pages = report.render_pages(data, "day")
    images = [a for fig in pages for ax in fig.axes for a in ax.get_images()]
    assert len(images) == 1  # not 13 empty tiles next to it
    assert not any("no speech" == t for fig in pages for t in _texts(fig))
    assert any("speech on 1 of 14 days" in t for t in _texts(pages[0]))


def test_calibration_status_is_on_the_report(db, tmp_path):
    data = history(db)
    assert [s["calibration"]["enrolled"] for s in data["sessions"]] == [True, True, True, False, False, False]
    first = report.render_pages(data, "day")[0]
    [note] = [t.get_text() for t in first.texts if t.get_gid() == "calibration"]
    assert "enrolled in 3 of 6 sessions" in note.replace("\n", " ") and "uncalibrated" in note
    cells = report.session_table_cells(data)
    assert [row[8] for row in cells] == ["enrolled"] * 3 + ["uncalibrated"] * 3
    none = {**data, "sessions": data["sessions"][3:]}
    assert "NOT ENROLLED" in report.calibration_summary(none) and "uncalibrated" in report.calibration_summary(none)


def test_the_figure_shows_the_json_numbers(db):
    data = history(db)
    pages = report.render_pages(data, by="day")
    artists = {a.get_gid(): a for fig in pages for ax in fig.axes for a in ax.get_children() if a.get_gid()}

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
    pages = report.render_pages(data, by="week")
    images = [a for fig in pages for ax in fig.axes for a in ax.get_images()]
    assert len(images) == sum(1 for w in data["weeks"] if w["metrics"]["points"]) == 2
    assert [w["week"] for w in data["weeks"]] == ["2024-W09", "2024-W10"]
    assert all(tuple(fig.get_size_inches()) == pytest.approx(report.page_size("a4")) for fig in pages)


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
