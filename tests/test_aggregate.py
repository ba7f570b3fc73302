"""Aggregation math on small data checked by hand, and the history the dashboard and report share."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from monitor.history.aggregate import (AggregateConfig, build_history, cells, dispersion, grid_entropy,
                                      group_positions, heatmap_grid, history_json, period_metrics, point_weights,
                                      quadrant_shares, series, session_codes, session_summary, weighted_mean_ci)
from monitor.live.events import Point, SessionInfo
from monitor.live.heatmap import cell_of
from monitor.history.store import Store


# ---- pure functions -------------------------------------------------------------------------
def test_cells_agree_with_the_live_heatmap():
    rng = np.random.default_rng(1)
    v, a = rng.uniform(-1.3, 1.3, 200), rng.uniform(-1.3, 1.3, 200)
    rows, cols = cells(v, a, 24)
    expected = [cell_of(x, y, 24) for x, y in zip(v, a, strict=True)]
    assert [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)] == expected


def test_weights_are_duration_times_confidence():
    np.testing.assert_allclose(point_weights([2.0, 1.0, -1.0], [0.5, 1.0, 1.0]), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(point_weights([2.0, 1.0], [0.5, 1.0], use_confidence=False), [2.0, 1.0])


def test_equal_weight_mean_and_t_interval():
    # x = 0.6, 0.2, -0.2, 0.2: mean 0.2; deviations 0.4, 0, -0.4, 0 -> SS 0.32, s^2 = 0.32/3,
    # SE = sqrt(0.32/3/4) = 0.1632993; t(0.975, df 3) = 3.182446 -> half width 0.5196913.
    out = weighted_mean_ci([0.6, 0.2, -0.2, 0.2], [1, 1, 1, 1])
    assert out["mean"] == pytest.approx(0.2)
    assert out["ci95"] == pytest.approx([0.2 - 0.5196913, 0.2 + 0.5196913], abs=1e-6)
    # scaling all weights changes nothing
    assert weighted_mean_ci([0.6, 0.2, -0.2, 0.2], [3, 3, 3, 3])["ci95"] == pytest.approx(out["ci95"])


def test_unequal_weights():
    # w = 2, 1, 1; x = 0.5, -0.5, 0.2: mean = (1.0 - 0.5 + 0.2) / 4 = 0.175
    # V1 = 4, V2 = 6, n_eff = 16/6; sum w d^2 = 2*0.325^2 + 0.675^2 + 0.025^2 = 0.6675
    # s^2 = 0.6675 / (4 - 6/4) = 0.267; SE = sqrt(0.267 * 6) / 4 = 0.3164253
    out = weighted_mean_ci([0.5, -0.5, 0.2], [2, 1, 1], bounds=None)
    from scipy.stats import t

    half = t.ppf(0.975, 16 / 6 - 1) * 0.3164253
    assert out["mean"] == pytest.approx(0.175)
    assert out["ci95"] == pytest.approx([0.175 - half, 0.175 + half], abs=1e-6)
    clipped = weighted_mean_ci([0.5, -0.5, 0.2], [2, 1, 1], bounds=(-1.0, 1.0))["ci95"]
    assert clipped == [-1.0, 1.0]  # the raw interval is wider than the scale


def test_interval_is_undefined_for_one_point_or_none():
    assert weighted_mean_ci([0.3], [2.0]) == {"mean": 0.3, "ci95": None}
    assert weighted_mean_ci([], []) == {"mean": None, "ci95": None}
    assert weighted_mean_ci([0.3, 0.5], [0.0, 0.0]) == {"mean": None, "ci95": None}


def test_dispersion_by_hand():
    # centroid of (1,0) w=1 and (-1,0) w=3 is (-0.5, 0); squared distances 2.25 and 0.25
    # -> sqrt((2.25 + 3 * 0.25) / 4) = sqrt(0.75)
    assert dispersion([1, -1], [0, 0], [1, 3]) == pytest.approx(math.sqrt(0.75))
    assert dispersion([0.3, 0.3], [0.1, 0.1], [1, 5]) == pytest.approx(0.0)


def test_entropy_by_hand():
    # four equal weights in four cells of an 8x8 grid: ln 4 / ln 64 = 1/3
    assert grid_entropy([-0.9, -0.1, 0.1, 0.9], [0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1], bins=8) == pytest.approx(1 / 3)
    # weights 3:1 in two cells: -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 64
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(64)
    assert grid_entropy([0.9, -0.9], [0.9, 0.9], [3, 1], bins=8) == pytest.approx(h)
    # two points in the same cell: 0
    assert grid_entropy([0.9, 0.95], [0.9, 0.92], [1, 2], bins=8) == pytest.approx(0.0)


def test_quadrant_shares_by_hand():
    v = [0.5, -0.5, -0.5, 0.5, 0.05, 0.0]
    a = [0.5, 0.5, -0.5, -0.5, 0.05, 0.3]  # the last one is on the valence boundary: positive
    w = [1, 2, 3, 4, 5, 5]
    shares = quadrant_shares(v, a, w, neutral_radius=0.2)
    assert shares == pytest.approx({"high_arousal_positive": 6 / 20, "high_arousal_negative": 2 / 20,
                                    "low_arousal_negative": 3 / 20, "low_arousal_positive": 4 / 20,
                                    "neutral": 5 / 20})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_heatmap_is_a_share_of_speech():
    grid = heatmap_grid([0.5, 0.5, -0.5], [0.5, 0.5, -0.5], [1, 1, 2], bins=4, smoothing_sigma=0)
    assert grid.sum() == pytest.approx(1.0)
    assert grid[3, 3] == pytest.approx(0.5) and grid[1, 1] == pytest.approx(0.5)  # rows = arousal
    smooth = heatmap_grid([0.5, 0.5, -0.5], [0.5, 0.5, -0.5], [1, 1, 2], bins=12, smoothing_sigma=1.0)
    assert smooth.sum() == pytest.approx(1.0) and np.count_nonzero(smooth) > 2
    assert heatmap_grid([], [], [], bins=4).sum() == 0


def test_period_metrics_by_hand():
    # two points, durations 2 and 1, confidence 0.5 and 1 -> weights 1 and 1
    m = period_metrics([0.6, -0.1], [0.8, 0.0], [2.0, 1.0], [0.5, 1.0])
    assert m["mean_valence"]["mean"] == pytest.approx(0.25)
    assert m["mean_arousal"]["mean"] == pytest.approx(0.4)
    assert m["intensity"]["mean"] == pytest.approx((1.0 + 0.1) / 2)  # |(0.6, 0.8)| = 1, |(-0.1, 0)| = 0.1
    assert m["dispersion"] == pytest.approx(math.sqrt(0.35 ** 2 + 0.4 ** 2))  # both 0.5 away from the centroid
    assert m["speech_seconds"] == pytest.approx(3.0) and m["points"] == 2
    assert m["quadrant_share"]["high_arousal_positive"] == pytest.approx(0.5)
    assert m["quadrant_share"]["neutral"] == pytest.approx(0.5)  # 0.1 from the origin < 0.2
    assert m["entropy"] == pytest.approx(math.log(2) / math.log(64))
    empty = period_metrics([], [], [], [])
    assert empty["points"] == 0 and empty["mean_valence"]["mean"] is None and empty["entropy"] is None


# ---- history over days --------------------------------------------------------------------
UTC = timezone.utc


def approx(x, abs=2e-6):
    """History numbers are rounded to 6 decimals."""
    return pytest.approx(x, abs=abs)


def ts(y, mo, d, h=0, mi=0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()


def add_session(store, sid, started_at, points, patient="P1"):
    """points: (valence, arousal, duration, confidence)."""
    store.begin_session(SessionInfo(session_id=sid, started_at=started_at, model_id="m@1", model_version="1",
                                    device="cpu", labels=("a",), source="test", patient_id=patient))
    t, rows = 0.0, []
    for i, (v, a, d, c) in enumerate(points):
        rows.append(Point(i, t, t + d, v, a, c, {}, 1.0, started_at + t + d))
        t += d + 1.0
    store.add_points(sid, rows)
    store.end_session(sid, started_at + t)


@pytest.fixture()
def store(target):
    """The same sessions in a SQLite file and in a PostgreSQL database (``target`` in conftest.py)."""
    with Store.open(target) as s:
        add_session(s, "d1", ts(2024, 3, 4, 10), [(0.5, 0.5, 2.0, 1.0), (0.5, 0.5, 2.0, 1.0)])
        # a late session: starts 23:30 UTC on 6 March, its points fall after midnight
        add_session(s, "d3-late", ts(2024, 3, 6, 23, 30), [(-0.5, -0.5, 1.0, 1.0)] * 2 + [(-0.5, 0.5, 3600.0, 0.0)])
        add_session(s, "d3-early", ts(2024, 3, 6, 9), [(0.5, -0.5, 2.0, 0.5)])
        add_session(s, "other", ts(2024, 3, 4, 11), [(0.9, 0.9, 5.0, 1.0)], patient="P2")
        add_session(s, "outside", ts(2024, 3, 20, 11), [(0.9, 0.9, 5.0, 1.0)])
        yield s


def test_days_follow_session_start_and_are_continuous(store):
    h = build_history(store, "P1", date(2024, 3, 3), date(2024, 3, 9), tz="UTC")
    assert [d["date"] for d in h["days"]] == [f"2024-03-0{i}" for i in range(3, 10)]
    counts = {d["date"]: d["metrics"]["points"] for d in h["days"]}
    assert counts == {"2024-03-03": 0, "2024-03-04": 2, "2024-03-05": 0, "2024-03-06": 4, "2024-03-07": 0,
                      "2024-03-08": 0, "2024-03-09": 0}
    assert [s["session_id"] for s in h["sessions"]] == ["d1", "d3-early", "d3-late"]  # not P2's, not 20 March
    day6 = h["days"][3]["metrics"]
    # weights: d3-early 2*0.5 = 1 at (0.5,-0.5); d3-late 1, 1 at (-0.5,-0.5); 3600 s at confidence 0 -> 0
    assert day6["mean_valence"]["mean"] == approx((0.5 - 0.5 - 0.5) / 3)
    assert day6["mean_arousal"]["mean"] == approx(-0.5)
    assert day6["speech_seconds"] == approx(2 + 1 + 1 + 3600)
    assert day6["quadrant_share"]["low_arousal_negative"] == approx(2 / 3, abs=1e-6)
    empty = h["days"][0]
    assert empty["metrics"]["mean_valence"] == {"mean": None, "ci95": None}
    assert empty["heatmap"]["max"] == 0 and np.asarray(empty["heatmap"]["grid"]).sum() == 0
    assert h["scale_max"] == approx(max(d["heatmap"]["max"] for d in h["days"]))
    # in Tokyo (UTC+9) the late session started on 7 March and the 09:00 UTC one at 18:00 on the 6th
    tokyo = build_history(store, "P1", date(2024, 3, 3), date(2024, 3, 9), tz="Asia/Tokyo")
    counts = {d["date"]: d["metrics"]["points"] for d in tokyo["days"]}
    assert counts["2024-03-06"] == 1 and counts["2024-03-07"] == 3


def test_sessions_and_weeks(store):
    h = build_history(store, "P1", date(2024, 3, 1), date(2024, 3, 20), tz="UTC", weeks=True, session_detail=True,
                      overall=True)
    s = {row["session_id"]: row for row in h["sessions"]}
    assert s["d1"]["points"] == 2 and s["d1"]["speech_seconds"] == approx(4.0)
    assert s["d1"]["mean_valence"] == approx(0.5) and s["d1"]["end_state"] == "clean"
    assert s["d1"]["started_at"] == "2024-03-04T10:00:00+00:00" and s["d1"]["ended_at"] == "2024-03-04T10:00:06+00:00"
    assert s["d3-late"]["mean_arousal"] == approx(-0.5)  # the confidence-0 point has no weight
    assert s["d1"]["metrics"]["points"] == 2 and s["d1"]["heatmap"]["bins"] == 24
    # ISO weeks: 1 March 2024 is a Friday (week 9), then weeks 10, 11, 12 (cut at the 20th)
    assert [(w["week"], w["start"], w["end"]) for w in h["weeks"]] == [
        ("2024-W09", "2024-03-01", "2024-03-03"), ("2024-W10", "2024-03-04", "2024-03-10"),
        ("2024-W11", "2024-03-11", "2024-03-17"), ("2024-W12", "2024-03-18", "2024-03-20")]
    assert [w["metrics"]["points"] for w in h["weeks"]] == [0, 6, 0, 1]
    assert h["overall"]["points"] == 7
    assert series(h, "mean_valence")[3] == approx(0.5)  # 4 March
    assert series(h, "quadrant_share.neutral")[0] is None


def test_history_json_shape(store):
    h = history_json(store, "P1", days=14, end="2024-03-09", tz="UTC")
    json.dumps(h, allow_nan=False)  # plain JSON, no NaN
    assert h["patient"] == "P1" and len(h["days"]) == 14 and h["days"][-1]["date"] == "2024-03-09"
    day = next(d for d in h["days"] if d["date"] == "2024-03-04")
    assert set(day) == {"date", "heatmap", "metrics"}
    assert set(day["heatmap"]) == {"bins", "grid", "max"}
    grid = np.asarray(day["heatmap"]["grid"])
    assert grid.shape == (24, 24) and grid.sum() == approx(1.0, abs=1e-4)
    assert np.unravel_index(grid.argmax(), grid.shape) == cell_of(0.5, 0.5, 24)  # rows = arousal, cols = valence
    assert set(day["metrics"]) == {"mean_valence", "mean_arousal", "intensity", "dispersion", "entropy",
                                   "quadrant_share", "speech_seconds", "points"}
    assert set(day["metrics"]["quadrant_share"]) == {"high_arousal_positive", "high_arousal_negative",
                                                     "low_arousal_negative", "low_arousal_positive", "neutral"}
    for row in h["sessions"]:
        assert {"session_id", "started_at", "ended_at", "points", "speech_seconds", "mean_valence",
                "mean_arousal"} <= set(row)
    assert isinstance(h["scale_max"], float)
    with pytest.raises(LookupError, match="nobody"):  # the dashboard's endpoint answers 404
        history_json(store, "nobody", days=3, end="2024-03-09")


def test_config_changes_the_grid(store):
    h = build_history(store, "P1", date(2024, 3, 4), date(2024, 3, 4), tz="UTC",
                      config=AggregateConfig(bins=8, smoothing_sigma=0))
    grid = np.asarray(h["days"][0]["heatmap"]["grid"])
    assert grid.shape == (8, 8) and grid[cell_of(0.5, 0.5, 8)] == approx(1.0)


def test_session_summary(store):
    s = session_summary(store, "d3-late", AggregateConfig(bins=8, smoothing_sigma=0))
    assert s["metrics"]["points"] == 3 and s["metrics"]["mean_valence"]["mean"] == approx(-0.5)
    row, col = cell_of(-0.5, -0.5, 8)
    assert s["heatmap"]["grid"][row][col] == approx(1.0)  # the confidence-0 point adds nothing
    with pytest.raises(KeyError):
        session_summary(store, "nope")


# ---- grouping: one sort instead of a mask per period ----------------------------------------
def test_group_positions_and_session_codes_match_masks():
    rng = np.random.default_rng(7)
    keys = rng.integers(-3, 40, 5000)
    groups = group_positions(keys, 35)  # keys below 0 and from 35 up belong to no group
    assert len(groups) == 35
    for g, which in enumerate(groups):
        np.testing.assert_array_equal(which, np.flatnonzero(keys == g))
    ids = [f"s{i}" for i in rng.permutation(30)]
    point_sessions = np.asarray([ids[i] for i in np.sort(rng.integers(0, 30, 3000))] + ["s3", "s3", ids[0]],
                                dtype=object)  # mostly grouped, as the store returns them, plus stray runs
    codes = session_codes(point_sessions, ids)
    assert codes.tolist() == [ids.index(s) for s in point_sessions]
    assert session_codes(np.asarray([], dtype=object), ids).tolist() == []


def test_grouped_history_equals_a_per_period_computation(tmp_path):
    """build_history groups points once; a straightforward mask per day, week and session gives the same JSON."""
    from calibration.jsonable import to_jsonable
    from monitor.history.aggregate import iso_week, local_date, resolve_tz, summarize

    rng = np.random.default_rng(11)
    zone_name, start, end = "America/New_York", date(2024, 2, 26), date(2024, 4, 9)  # spans a DST change
    zone = resolve_tz(zone_name)
    with Store.open(tmp_path / "r.sqlite") as s:
        first = ts(2024, 2, 20)
        for k in range(60):
            started = first + float(rng.uniform(0, 55 * 86400))
            points = [(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 5)),
                       float(rng.uniform(0, 1))) for _ in range(int(rng.integers(0, 40)))]
            add_session(s, f"r{k:02d}", started, points, patient="P1" if k % 7 else "P2")
        cfg = AggregateConfig(bins=12, smoothing_sigma=0.7)
        got = build_history(s, "P1", start, end, tz=zone_name, config=cfg, weeks=True, session_detail=True,
                            overall=True)

        sessions = s.sessions("P1", start=datetime.combine(start, datetime.min.time(), zone).timestamp(),
                              end=datetime.combine(end, datetime.min.time(), zone).timestamp() + 86400 * 2)
        table = s.points([x.session_id for x in sessions])
        day_of = {x.session_id: local_date(x.started_at, zone) for x in sessions}
        point_date = [day_of[sid] for sid in table.session]
        days = []
        for i in range((end - start).days + 1):
            d = start + timedelta(days=i)
            mask = np.asarray([p == d for p in point_date], dtype=bool)
            days.append(to_jsonable({"date": d.isoformat(), **summarize(table.select(mask), cfg)}, digits=6))
        assert got["days"] == days
        monday, weeks = start - timedelta(days=start.weekday()), []
        while monday <= end:
            lo, hi = max(monday, start), min(monday + timedelta(days=6), end)
            mask = np.asarray([lo <= p <= hi for p in point_date], dtype=bool)
            weeks.append(to_jsonable({"week": iso_week(monday), "start": lo.isoformat(), "end": hi.isoformat(),
                                      **summarize(table.select(mask), cfg)}, digits=6))
            monday += timedelta(days=7)
        assert got["weeks"] == weeks
        in_range = [x for x in sessions if start <= day_of[x.session_id] <= end]
        assert [r["session_id"] for r in got["sessions"]] == [x.session_id for x in in_range]
        for row, x in zip(got["sessions"], in_range, strict=True):
            detail = to_jsonable(summarize(table.select(table.session == x.session_id), cfg), digits=6)
            assert row["heatmap"] == detail["heatmap"] and row["metrics"] == detail["metrics"]
            assert row["points"] == int((table.session == x.session_id).sum())
        assert sum(d["metrics"]["points"] for d in got["days"]) == len(table.select(
            np.asarray([start <= p <= end for p in point_date], dtype=bool)))
