"""Aggregation of stored points into heat maps and tone metrics, per session, day and week.

One code path for the report (``monitor.history.report``), the dashboard's history
endpoint (``history_json``) and anything else that summarises a period, so a
number on the dashboard is the number in the PDF.

Conventions (``docs/store.md`` explains them for clinicians):

* A point's weight is its segment duration x the model's confidence, as in the
  live heat map, so long confident speech counts more than a short guess.
* A point belongs to the calendar day (and ISO week) on which its *session
  started*, in the chosen time zone (default: this computer's local time). A
  session that runs past midnight stays on one day.
* Heat maps are the share of the period's weighted speech in each cell (the
  grid sums to 1 before smoothing), so days with more or less speech compare by
  shape; ``scale_max`` puts every day on one colour scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.ndimage import gaussian_filter

from calibration.jsonable import to_jsonable
from calibration.quadrants import NEUTRAL_RADIUS, quadrant_masks
from monitor.live.placement import calibration_status

if TYPE_CHECKING:  # pragma: no cover
    from monitor.history.store import PointTable, SessionRow, Store

INTENSITY_MAX = math.sqrt(2.0)


@dataclass
class AggregateConfig:
    """How periods are summarised.

    bins / smoothing_sigma: heat map grid and blur (cells). neutral_radius:
    points closer than this to the origin count as "near neutral" rather than
    in a quadrant. entropy_bins: the coarser grid the entropy is measured on
    (a fine grid would make entropy track the number of points rather than
    their spread). level: confidence level of the intervals.
    """

    bins: int = 24
    smoothing_sigma: float = 1.0
    use_confidence: bool = True
    neutral_radius: float = NEUTRAL_RADIUS
    entropy_bins: int = 8
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- pure functions on arrays -----------------------------------------------------------
def point_weights(duration: ArrayLike, confidence: ArrayLike, use_confidence: bool = True) -> np.ndarray:
    """Duration x confidence (negative values count as 0), as in ``RollingHeatmap.add``."""
    w = np.maximum(np.asarray(duration, dtype=np.float64), 0.0)
    if use_confidence:
        w = w * np.maximum(np.asarray(confidence, dtype=np.float64), 0.0)
    return w


def cells(valence: ArrayLike, arousal: ArrayLike, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``monitor.live.heatmap.cell_of``: (rows = arousal, cols = valence), outside values to the border."""
    def index(x: ArrayLike) -> np.ndarray:
        return np.clip(np.floor((np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * bins), 0, bins - 1).astype(np.int64)

    return index(arousal), index(valence)


def weight_grid(valence: ArrayLike, arousal: ArrayLike, weights: ArrayLike, bins: int) -> np.ndarray:
    """Summed weight per cell, unsmoothed; ``grid[row=arousal bottom-up, col=valence]``."""
    grid = np.zeros((bins, bins), dtype=np.float64)
    rows, cols = cells(valence, arousal, bins)
    np.add.at(grid, (rows, cols), np.asarray(weights, dtype=np.float64))
    return grid


def heatmap_grid(valence: ArrayLike, arousal: ArrayLike, weights: ArrayLike, bins: int = 24,
                 smoothing_sigma: float = 1.0) -> np.ndarray:
    """Share of the weight per cell (sums to 1; zeros when empty), blurred like the live map."""
    grid = weight_grid(valence, arousal, weights, bins)
    total = float(grid.sum())
    if total <= 0:
        return grid
    grid /= total
    if smoothing_sigma > 0:
        grid = gaussian_filter(grid, sigma=smoothing_sigma, mode="constant")
        grid /= max(float(grid.sum()), 1e-12)  # what blurs past the border is given back
    return grid


def weighted_mean_ci(x: ArrayLike, w: ArrayLike, level: float = 0.95,
                     bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Weighted mean with a t interval; ``{"mean": m, "ci95": [lo, hi]}`` (None where undefined).

    Uses reliability weights: s^2 = sum w (x - m)^2 / (V1 - V2 / V1), SE^2 = s^2 V2 / V1^2,
    df = n_eff - 1 with n_eff = V1^2 / V2 (V1 = sum w, V2 = sum w^2). With equal weights
    this is the textbook mean +- t * s / sqrt(n). Segments are treated as independent;
    speech within a session is correlated, so read the interval as a lower bound on the
    uncertainty. ``bounds`` clips the interval to the values the quantity can take.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    v1 = float(w.sum())
    if x.size == 0 or v1 <= 0:
        return {"mean": None, "ci95": None}
    mean = float(np.dot(w, x) / v1)
    v2 = float(np.dot(w, w))
    n_eff = v1 * v1 / v2
    if n_eff <= 1.0 + 1e-9:
        return {"mean": mean, "ci95": None}
    var = float(np.dot(w, (x - mean) ** 2)) / (v1 - v2 / v1)
    se = math.sqrt(max(var, 0.0) * v2) / v1
    q = float(stats.t.ppf(0.5 + level / 2.0, n_eff - 1.0))
    lo, hi = mean - q * se, mean + q * se
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "ci95": [lo, hi]}


def dispersion(valence: ArrayLike, arousal: ArrayLike, w: ArrayLike) -> float | None:
    """Weighted RMS distance from the weighted centroid: how widely the tone ranges."""
    v, a, wt = (np.asarray(z, dtype=np.float64) for z in (valence, arousal, w))
    total = float(wt.sum())
    if total <= 0:
        return None
    mv, ma = np.dot(wt, v) / total, np.dot(wt, a) / total
    return float(math.sqrt(np.dot(wt, (v - mv) ** 2 + (a - ma) ** 2) / total))


def grid_entropy(valence: ArrayLike, arousal: ArrayLike, w: ArrayLike, bins: int = 8) -> float | None:
    """Shannon entropy of the weight over a ``bins`` x ``bins`` grid, divided by its maximum log(bins^2).

    0: all speech in one cell; 1: spread evenly over the whole circumplex square.
    """
    grid = weight_grid(valence, arousal, w, bins)
    total = float(grid.sum())
    if total <= 0:
        return None
    p = grid[grid > 0] / total
    return float(-np.sum(p * np.log(p)) / math.log(bins * bins))


def quadrant_shares(valence: ArrayLike, arousal: ArrayLike, w: ArrayLike,
                    neutral_radius: float = NEUTRAL_RADIUS) -> dict[str, float] | None:
    """Share of the weight in each quadrant (``calibration.quadrants``: one rule for live, history and reports)."""
    wt = np.asarray(w, dtype=np.float64)
    total = float(wt.sum())
    if total <= 0:
        return None
    return {name: float(wt[m].sum() / total) for name, m in quadrant_masks(valence, arousal, neutral_radius).items()}


def period_metrics(valence: ArrayLike, arousal: ArrayLike, duration: ArrayLike, confidence: ArrayLike,
                   config: AggregateConfig | None = None) -> dict[str, Any]:
    """The tone metrics of one period's points (all None but the counts when it holds none)."""
    cfg = config or AggregateConfig()
    v, a = np.asarray(valence, dtype=np.float64), np.asarray(arousal, dtype=np.float64)
    d = np.maximum(np.asarray(duration, dtype=np.float64), 0.0)
    w = point_weights(d, confidence, cfg.use_confidence)
    return {
        "mean_valence": weighted_mean_ci(v, w, cfg.level, (-1.0, 1.0)),
        "mean_arousal": weighted_mean_ci(a, w, cfg.level, (-1.0, 1.0)),
        "intensity": weighted_mean_ci(np.hypot(v, a), w, cfg.level, (0.0, INTENSITY_MAX)),
        "dispersion": dispersion(v, a, w),
        "entropy": grid_entropy(v, a, w, cfg.entropy_bins),
        "quadrant_share": quadrant_shares(v, a, w, cfg.neutral_radius),
        "speech_seconds": float(d.sum()),
        "points": int(v.size),
    }


def summarize(table: "PointTable", config: AggregateConfig | None = None) -> dict[str, Any]:
    """Heat map and metrics of a set of points: ``{"heatmap": {"bins", "grid", "max"}, "metrics": {...}}``."""
    cfg = config or AggregateConfig()
    w = point_weights(table.duration, table.confidence, cfg.use_confidence)
    grid = heatmap_grid(table.valence, table.arousal, w, cfg.bins, cfg.smoothing_sigma)
    return {
        "heatmap": {"bins": cfg.bins, "grid": grid, "max": float(grid.max()) if grid.size else 0.0},
        "metrics": period_metrics(table.valence, table.arousal, table.duration, table.confidence, cfg),
    }


# ---- calendar -----------------------------------------------------------------------------
def resolve_tz(name: str | None) -> tzinfo | None:
    """None or "local": this computer's zone (None); "UTC"; or an IANA name such as "Europe/Berlin"."""
    if name is None or str(name).lower() == "local":
        return None
    if str(name).upper() in ("UTC", "Z"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use 'local', 'UTC' or a name like 'Europe/Berlin')") from exc


def to_datetime(ts: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts).astimezone()


def local_date(ts: float, tz: tzinfo | None) -> date:
    return to_datetime(ts, tz).date()


def day_start(d: date, tz: tzinfo | None) -> float:
    """Unix time of local midnight starting day ``d``."""
    if tz is None:
        return datetime.combine(d, dtime()).timestamp()
    return datetime.combine(d, dtime(), tzinfo=tz).timestamp()


def today(tz: tzinfo | None) -> date:
    return datetime.now(tz).date() if tz is not None else date.today()


def iso(ts: float | None, tz: tzinfo | None) -> str | None:
    return None if ts is None else to_datetime(ts, tz).isoformat(timespec="seconds")


def iso_week(d: date) -> str:
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


# ---- history ------------------------------------------------------------------------------
def group_positions(keys: ArrayLike, n_groups: int) -> list[np.ndarray]:
    """Positions of the items whose key is 0, 1, ..., ``n_groups - 1``, each group in the items' order.

    Keys outside that range belong to no group. Why: one stable sort groups all
    points at once, where a mask per period cost periods x points; the order
    within a group is the items' own, so sums come out bit for bit as before.
    """
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    order = np.argsort(k, kind="stable")
    bounds = np.searchsorted(k[order], np.arange(n_groups + 1), side="left")
    return [order[bounds[g]:bounds[g + 1]] for g in range(n_groups)]


def session_codes(point_sessions: np.ndarray, session_ids: Sequence[str]) -> np.ndarray:
    """Each point's position in ``session_ids``: one lookup per run of equal ids (the store returns them grouped)."""
    n = len(point_sessions)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], point_sessions[1:] != point_sessions[:-1])))
    position = {sid: i for i, sid in enumerate(session_ids)}
    run_codes = np.asarray([position[sid] for sid in point_sessions[starts]], dtype=np.int64)
    return np.repeat(run_codes, np.diff(np.append(starts, n)))


def _session_row(s: "SessionRow", sub: "PointTable", day: date, zone: tzinfo | None, cfg: AggregateConfig,
                 detail: bool, mark_list: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    w = point_weights(sub.duration, sub.confidence, cfg.use_confidence)
    total = float(w.sum())
    row: dict[str, Any] = {
        "session_id": s.session_id,
        "started_at": iso(s.started_at, zone),
        "ended_at": iso(s.ended_at, zone),
        "minutes": s.minutes,
        "points": int(len(sub)),
        "speech_seconds": float(sub.duration.sum()),
        "mean_valence": float(np.dot(w, sub.valence) / total) if total > 0 else None,
        "mean_arousal": float(np.dot(w, sub.arousal) / total) if total > 0 else None,
        "date": day.isoformat(),
        "end_state": s.end_state,
        "model_id": s.model_id,
        "marks": s.marks,
        "calibration": {k: v for k, v in calibration_status(s.settings).items() if k in ("enrolled", "label", "text")},
    }
    if detail:
        row.update(summarize(sub, cfg))
        # The marks themselves (the report draws them on its time lines and lists their text).
        row["mark_list"] = [{"t": m["t"], "text": m["text"], "at": iso(m["wall_time"], zone)} for m in mark_list or []]
    return row


def _week_rows(table: "PointTable", point_day: np.ndarray, start: date, end: date,
               cfg: AggregateConfig) -> list[dict[str, Any]]:
    """ISO weeks (Monday first) overlapping start..end, each cut to the range; ``point_day`` counts from ``start``."""
    first_monday = start - timedelta(days=start.weekday())
    n_weeks = (end - first_monday).days // 7 + 1
    in_range = (point_day >= 0) & (point_day <= (end - start).days)
    point_week = np.where(in_range, (point_day + start.weekday()) // 7, -1)
    rows = []
    for k, which in enumerate(group_positions(point_week, n_weeks)):
        monday = first_monday + timedelta(days=7 * k)
        lo, hi = max(monday, start), min(monday + timedelta(days=6), end)
        rows.append({"week": iso_week(monday), "start": lo.isoformat(), "end": hi.isoformat(),
                     **summarize(table.select(which), cfg)})
    return rows


def build_history(store: "Store", patient_id: str | None, start: date, end: date, *,
                  tz: str | tzinfo | None = None, config: AggregateConfig | None = None, weeks: bool = False,
                  session_detail: bool = False, overall: bool = False) -> dict[str, Any]:
    """Everything about a patient's days ``start``..``end`` (inclusive) as plain JSON values.

    ``patient_id=None`` summarises the sessions recorded without a patient.
    Every day in the range is listed, with ``points: 0`` when it had no speech,
    so the days form a continuous grid. ``weeks``/``session_detail``/``overall``
    add ISO-week periods, per-session heat maps and metrics, and the whole
    range's metrics (the report uses them; the dashboard needs only days).
    """
    cfg = config or AggregateConfig()
    zone = resolve_tz(tz) if (tz is None or isinstance(tz, str)) else tz
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    sessions = store.sessions(patient_id, unassigned=patient_id is None, start=day_start(start, zone),
                              end=day_start(end + timedelta(days=1), zone))
    ids = [s.session_id for s in sessions]
    table = store.points(ids)
    session_date = [local_date(s.started_at, zone) for s in sessions]
    # Each point's day (counted from ``start``) is its session's: computed per session, then spread to the points.
    point_session = session_codes(table.session, ids)
    point_day = np.asarray([(d - start).days for d in session_date], dtype=np.int64)[point_session]

    n_days = (end - start).days + 1
    days = [{"date": (start + timedelta(days=i)).isoformat(), **summarize(table.select(which), cfg)}
            for i, which in enumerate(group_positions(point_day, n_days))]
    out: dict[str, Any] = {
        "patient": patient_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "tz": "local" if zone is None else str(zone),
        "units": "heat map cells: share of the period's speech (duration x confidence), smoothed; "
                 "valence/arousal in [-1, 1]",
        "days": days,
        "sessions": [_session_row(s, table.select(which), session_date[k], zone, cfg, session_detail,
                                  store.mark_records(s.session_id) if session_detail else None)
                     for k, (s, which) in enumerate(zip(sessions, group_positions(point_session, len(sessions)),
                                                        strict=True))],
        "scale_max": max((e["heatmap"]["max"] for e in days), default=0.0),
    }
    if weeks:
        out["weeks"] = _week_rows(table, point_day, start, end, cfg)
        out["weeks_scale_max"] = max((e["heatmap"]["max"] for e in out["weeks"]), default=0.0)
    if overall:
        out["overall"] = summarize(table, cfg)["metrics"]
    out["config"] = cfg.to_dict()
    return cast("dict[str, Any]", to_jsonable(out, digits=6))


def session_summary(store: "Store", session_id: str, config: AggregateConfig | None = None) -> dict[str, Any]:
    """One session's heat map and metrics (same JSON conventions as the days of ``history_json``)."""
    if store.session(session_id) is None:
        raise KeyError(f"no session {session_id!r}")
    summary = {"session_id": session_id, **summarize(store.points([session_id]), config)}
    return cast("dict[str, Any]", to_jsonable(summary, digits=6))


def _as_date(x: date | str | None) -> date | None:
    return date.fromisoformat(x) if isinstance(x, str) else x


def period_bounds(days: int | None = 14, start: date | str | None = None, end: date | str | None = None,
                  tz: tzinfo | None = None) -> tuple[date, date]:
    """Resolve --days / --from / --to into inclusive dates; the default is the last ``days`` days up to today."""
    first, last = _as_date(start), _as_date(end)
    if last is None:
        last = today(tz) if first is None or days is None else first + timedelta(days=days - 1)
    if first is None:
        if days is None or days < 1:
            raise ValueError("--days must be at least 1")
        first = last - timedelta(days=days - 1)
    if last < first:
        raise ValueError(f"the period ends ({last}) before it starts ({first})")
    return first, last


def history_json(store: "Store", patient_id: str | None, days: int = 14, *, end: date | str | None = None,
                 tz: str | None = None, config: AggregateConfig | None = None) -> dict[str, Any]:
    """The dashboard's history: the last ``days`` calendar days up to today (or ``end``), day by day.

    Shape: ``{"patient", "days": [{"date", "heatmap": {"bins", "grid", "max"}, "metrics": {...}}],
    "sessions": [...], "scale_max", ...}``; empty days are included with ``points: 0``.
    Raises ``LookupError`` for a patient the store does not know (the endpoint answers 404).
    """
    if patient_id is not None and not store.has_patient(patient_id):
        raise LookupError(f"no patient {patient_id!r} in the store")
    zone = resolve_tz(tz)
    start, stop = period_bounds(days=days, end=end, tz=zone)
    return build_history(store, patient_id, start, stop, tz=zone, config=config)


def series(history: dict[str, Any], key: str, periods: str = "days") -> list[float | None]:
    """One metric across periods (``key`` like "mean_valence" or "quadrant_share.neutral"), None where empty."""
    out = []
    for entry in history[periods]:
        value: Any = entry["metrics"]
        for part in key.split("."):
            value = None if value is None else value.get(part)
        if isinstance(value, dict):
            value = value.get("mean")
        out.append(value)
    return out
