"""``mood-monitor report``: a patient's emotional heat maps and tone over days and weeks.

The figure (PNG or PDF) has three parts, all drawn from the dict that the
JSON output holds (``monitor.history.aggregate.build_history``), so the picture and
the numbers cannot disagree:

1. small multiples: one circumplex heat map per day (rows are calendar weeks,
   Monday first) or per ISO week, all on one colour scale;
2. trend lines of the tone metrics with their 95 % intervals;
3. the table of sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from monitor.history.aggregate import AggregateConfig, build_history, period_bounds, resolve_tz, series
from monitor.live.private import open_private, write_private_text

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import SubplotSpec

log = logging.getLogger(__name__)

DPI = 100
WIDTH_IN = 16.0
TITLE_IN = 1.2
PANEL_ROW_IN = 2.35
TRENDS_IN = 7.2
TABLE_ROW_IN = 0.24
TABLE_HEAD_IN = 0.75
MAX_TABLE_ROWS = 60
CMAP = "magma_r"

QUADRANT_STYLE = [  # (key, legend label, colour)
    ("high_arousal_positive", "high arousal +", "#e69f00"),
    ("high_arousal_negative", "high arousal -", "#d55e00"),
    ("low_arousal_negative", "low arousal -", "#0072b2"),
    ("low_arousal_positive", "low arousal +", "#009e73"),
    ("neutral", "near neutral", "#bbbbbb"),
]
TABLE_COLUMNS = ["date", "start", "minutes", "points", "speech s", "valence", "arousal", "ended", "model"]


# ---- layout -------------------------------------------------------------------------------
def _panels(history: dict[str, Any], by: str) -> tuple[list[dict[str, Any] | None], int]:
    """The heat-map panels in reading order (None = an empty slot) and the number of columns."""
    if by == "week":
        return list(history["weeks"]), 7  # same panel size as the daily view
    days = history["days"]
    first = date.fromisoformat(days[0]["date"])
    slots: list[dict[str, Any] | None] = [None] * first.weekday() + list(days)  # rows are Monday-first weeks
    return slots, 7


def _table_rows(history: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = history["sessions"][-MAX_TABLE_ROWS:]
    return rows


def figure_size(history: dict[str, Any], by: str = "day") -> tuple[float, float]:
    """Width and height in inches: the PNG is exactly this times ``DPI`` pixels."""
    slots, cols = _panels(history, by)
    rows = max(1, math.ceil(len(slots) / cols))
    table = TABLE_HEAD_IN + TABLE_ROW_IN * max(1, len(_table_rows(history)))
    return WIDTH_IN, round(TITLE_IN + rows * PANEL_ROW_IN + TRENDS_IN + table, 2)


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def session_table_cells(history: dict[str, Any]) -> list[list[str]]:
    """The table's text, row by row (tests compare it with the JSON)."""
    out = []
    for s in _table_rows(history):
        start = datetime.fromisoformat(s["started_at"])
        minutes = s.get("minutes")  # the audio the session covered (a --fast replay is as long as its recording)
        if minutes is None and s["ended_at"]:
            minutes = (datetime.fromisoformat(s["ended_at"]) - start).total_seconds() / 60.0
        state = {"clean": "ok", "recovered": "recovered", None: "running"}.get(s.get("end_state"), s.get("end_state"))
        out.append([s["date"], start.strftime("%H:%M"), _fmt(minutes, ".1f"), str(s["points"]),
                    _fmt(s["speech_seconds"], ".1f"), _fmt(s["mean_valence"], "+.2f"), _fmt(s["mean_arousal"], "+.2f"),
                    state, str(s.get("model_id", ""))[:28]])
    return out


# ---- drawing ------------------------------------------------------------------------------
def _circumplex_axes(ax: Axes, show_x: bool, show_y: bool) -> None:
    theta = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(theta), np.sin(theta), color="#888888", lw=0.5, ls="--")
    ax.axhline(0, color="#888888", lw=0.5)
    ax.axvline(0, color="#888888", lw=0.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_xticks([-1, 0, 1] if show_x else [])
    ax.set_yticks([-1, 0, 1] if show_y else [])
    ax.tick_params(labelsize=7, length=2)
    if show_x:
        ax.set_xlabel("valence", fontsize=8, labelpad=1)
    if show_y:
        ax.set_ylabel("arousal", fontsize=8, labelpad=1)


def render(history: dict[str, Any], by: str = "day", title: str | None = None) -> Figure:
    """Draw the report; returns the matplotlib Figure (Agg, nothing shown)."""
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    width, height = figure_size(history, by)
    fig = Figure(figsize=(width, height), dpi=DPI)
    slots, cols = _panels(history, by)
    panel_rows = max(1, math.ceil(len(slots) / cols))
    table_h = height - TITLE_IN - panel_rows * PANEL_ROW_IN - TRENDS_IN
    outer = GridSpec(3, 1, figure=fig, height_ratios=[panel_rows * PANEL_ROW_IN, TRENDS_IN, table_h],
                     top=1 - TITLE_IN / height, bottom=0.01, left=0.06, right=0.93, hspace=0.12)
    _draw_title(fig, history, by, title, height)
    _draw_panels(fig, outer[0], history, by, height)
    _draw_trends(fig, outer[1], history, by)
    _draw_sessions(fig, outer[2], history)
    return fig


def _draw_title(fig: Figure, history: dict[str, Any], by: str, title: str | None, height: float) -> None:
    n_days = len(history["days"])
    n_pts = sum(d["metrics"]["points"] for d in history["days"])
    fig.suptitle(title or f"Patient {history['patient']}: {history['from']} to {history['to']}", fontsize=15,
                 x=0.06, ha="left", y=1 - 0.25 / height)
    fig.text(0.06, 1 - 0.62 / height,
             f"{len(history['sessions'])} sessions, {n_pts} speech segments over {n_days} days "
             f"(days in {history['tz']} time). Heat maps: share of each {by}'s speech (duration x confidence) "
             f"per cell, one colour scale. Intervals: 95 % t intervals treating segments as independent.",
             fontsize=9, color="#444444")


def _draw_panels(fig: Figure, spec: SubplotSpec, history: dict[str, Any], by: str, height: float) -> None:
    """1. small multiples: one heat map per day or week, all on one colour scale."""
    slots, cols = _panels(history, by)
    panel_rows = max(1, math.ceil(len(slots) / cols))
    vmax = history.get("weeks_scale_max" if by == "week" else "scale_max") or 1.0
    grid_spec = spec.subgridspec(panel_rows, cols, wspace=0.08, hspace=0.35)
    image = None
    for i, entry in enumerate(slots):
        if entry is None:
            continue
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid_spec[r, c])
        m = entry["metrics"]
        if m["points"]:
            grid = np.asarray(entry["heatmap"]["grid"], dtype=np.float64)
            shown = np.ma.masked_less(grid, vmax * 1e-3)  # empty cells stay white
            image = ax.imshow(shown, origin="lower", extent=(-1, 1, -1, 1), cmap=CMAP, vmin=0.0, vmax=vmax,
                              interpolation="nearest", gid=f"heatmap:{entry.get('date', entry.get('week'))}")
        else:
            ax.set_facecolor("#f4f4f4")
            ax.text(0, 0, "no speech", ha="center", va="center", fontsize=8, color="#999999")
        _circumplex_axes(ax, show_x=(i + cols >= len(slots)), show_y=(c == 0))
        sub = f"{m['points']} seg, {m['speech_seconds'] / 60:.1f} min" if m["points"] else ""
        ax.set_title(f"{_panel_label(entry, by)}\n{sub}", fontsize=8, pad=2)
    if image is not None:
        cax = fig.add_axes((0.945, 1 - (TITLE_IN + panel_rows * PANEL_ROW_IN * 0.85) / height, 0.01,
                            panel_rows * PANEL_ROW_IN * 0.7 / height))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label(f"share of the {by}'s speech per cell", fontsize=8)
        bar.ax.tick_params(labelsize=7)


def _panel_label(entry: dict[str, Any], by: str) -> str:
    if by == "week":
        return f"{entry['week']}  ({entry['start'][5:]}–{entry['end'][5:]})"
    return date.fromisoformat(entry["date"]).strftime("%a %d %b")


def _nan(values: Sequence[float | None]) -> np.ndarray:
    """None (an empty period) as NaN, so it is skipped rather than drawn as zero."""
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _band(entries: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = [], []
    for e in entries:
        ci = (e["metrics"].get(metric) or {}).get("ci95")
        lo.append(np.nan if not ci else ci[0])
        hi.append(np.nan if not ci else ci[1])
    return np.asarray(lo), np.asarray(hi)


class _Trends:
    """The trend panels' shared x positions (period dates) and periods."""

    def __init__(self, history: dict[str, Any], by: str):
        self.history = history
        self.periods = "weeks" if by == "week" else "days"
        self.entries: list[dict[str, Any]] = history[self.periods]
        if by == "week":  # plotted mid-week (Thursday), the ISO week's centre
            starts = [date.fromisoformat(e["start"]) for e in self.entries]
            self.x: list[Any] = [d - timedelta(days=d.weekday() - 3) for d in starts]  # dates: matplotlib converts
        else:
            self.x = [date.fromisoformat(e["date"]) for e in self.entries]
        self.xs = np.asarray(self.x, dtype=object)

    def line(self, ax: Axes, metric: str, colour: str, label: str, marker: str = "o", ms: float = 4,
             with_band: bool = True) -> None:
        """Connect the periods that had speech (empty ones are skipped, not drawn as zero)."""
        y = _nan(series(self.history, metric, self.periods))
        ok = np.isfinite(y)
        if with_band:
            lo, hi = _band(self.entries, metric)
            ax.fill_between(list(self.xs[ok]), lo[ok], hi[ok], color=colour, alpha=0.18, lw=0)
        ax.plot(list(self.xs[ok]), y[ok], marker=marker, ms=ms, color=colour, label=label, gid=metric)


def _draw_trends(fig: Figure, spec: SubplotSpec, history: dict[str, Any], by: str) -> None:
    """2. trends: tone means with intervals; range measures; quadrant shares and speech minutes."""
    import matplotlib.dates as mdates

    t = _Trends(history, by)
    trend = spec.subgridspec(3, 1, hspace=0.45)
    ax1 = fig.add_subplot(trend[0])
    t.line(ax1, "mean_valence", "#0072b2", "mean valence")
    t.line(ax1, "mean_arousal", "#d55e00", "mean arousal")
    ax1.axhline(0, color="#888888", lw=0.6)
    ax1.set_ylim(-1, 1)
    ax1.set_ylabel("valence / arousal", fontsize=9)
    ax1.legend(loc="upper left", fontsize=8, ncol=2, frameon=False)
    ax1.set_title("tone: weighted means with 95 % intervals", fontsize=9, loc="left")

    ax2 = fig.add_subplot(trend[1], sharex=ax1)
    t.line(ax2, "intensity", "#cc79a7", "intensity (distance from neutral)")
    t.line(ax2, "dispersion", "#555555", "dispersion (spread around the mean)", marker="s", ms=3, with_band=False)
    t.line(ax2, "entropy", "#009e73", "entropy of the map (0 one cell, 1 even)", marker="^", ms=3, with_band=False)
    ax2.set_ylim(0, 1.2)
    ax2.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
    ax2.set_title("range: intensity, dispersion, entropy", fontsize=9, loc="left")

    ax3 = fig.add_subplot(trend[2], sharex=ax1)
    twin = _draw_shares(ax3, t, by)
    for ax in (ax1, ax2, ax3, twin):
        ax.tick_params(labelsize=8)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.25)
    pad = timedelta(days=4 if by == "week" else 0.6)
    ax1.set_xlim(t.x[0] - pad, t.x[-1] + pad)
    ax3.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))  # type: ignore[no-untyped-call]
    ax3.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, len(t.x) // 14))  # type: ignore[no-untyped-call]
                                if by == "day" else mdates.WeekdayLocator(byweekday=0))  # type: ignore[no-untyped-call]
    for ax in (ax1, ax2):
        ax.tick_params(labelbottom=False)


def _draw_shares(ax3: Axes, t: _Trends, by: str) -> Axes:
    """Stacked quadrant shares per period, with speech minutes on a twin axis (returned)."""
    bottom = np.zeros(len(t.entries))
    bar_width = 6.0 if by == "week" else 0.8
    for key_q, label, colour in QUADRANT_STYLE:
        share = np.nan_to_num(_nan(series(t.history, f"quadrant_share.{key_q}", t.periods)))
        ax3.bar(t.x, share, bottom=bottom, width=bar_width, color=colour, label=label, gid=f"quadrant:{key_q}")
        bottom += share
    ax3.set_ylim(0, 1)
    ax3.set_ylabel("share of speech", fontsize=9)
    ax3.legend(loc="upper left", fontsize=8, ncol=5, frameon=False, bbox_to_anchor=(0, 1.32))
    twin = ax3.twinx()
    minutes = _nan([e["metrics"]["speech_seconds"] / 60.0 if e["metrics"]["points"] else None for e in t.entries])
    ok = np.isfinite(minutes)
    twin.plot(list(t.xs[ok]), minutes[ok], color="black", marker="D", ms=3, lw=1, label="speech minutes",
              gid="speech_minutes")
    twin.set_ylabel("speech (min)", fontsize=9)
    twin.set_ylim(0, max(1.0, float(np.nanmax(minutes)) * 1.15 if ok.any() else 1.0))
    return twin


def _draw_sessions(fig: Figure, spec: SubplotSpec, history: dict[str, Any]) -> None:
    """3. the table of sessions (the last ``MAX_TABLE_ROWS``)."""
    tax = fig.add_subplot(spec)
    tax.axis("off")
    cells = session_table_cells(history)
    more = len(history["sessions"]) - len(cells)
    heading = "sessions" + (f" (the last {len(cells)} of {len(history['sessions'])})" if more > 0 else "")
    tax.set_title(heading, fontsize=9, loc="left")
    if not cells:
        tax.text(0.5, 0.5, "no sessions in this period", ha="center", va="center", fontsize=9, color="#777777")
        return
    table = tax.table(cellText=cells, colLabels=TABLE_COLUMNS, loc="upper center", cellLoc="center",
                      colWidths=[0.09, 0.06, 0.07, 0.06, 0.07, 0.07, 0.07, 0.08, 0.25])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.0)
    table.set_gid("sessions")


def write(history: dict[str, Any], out: str | Path, by: str = "day", title: str | None = None) -> Path:
    """Write ``out`` as PNG, PDF or JSON, chosen by its extension."""
    out = Path(out)
    suffix = out.suffix.lower()
    # Clinical data: owner-only files (0600) and new folders (0700), like the store.
    if suffix == ".json":
        write_private_text(out, json.dumps(history, indent=1) + "\n")
    elif suffix in (".png", ".pdf", ".svg"):
        fig = render(history, by=by, title=title)
        with open_private(out, "wb") as f:
            fig.savefig(f, dpi=DPI, format=suffix[1:], metadata=_metadata(suffix))
    else:
        raise ValueError(f"cannot write {out}: use a .png, .pdf, .svg or .json file name")
    return out


def _metadata(suffix: str) -> dict[str, Any]:
    # Reproducible files: no creation date or software version stamped in.
    if suffix == ".png":
        return {"Software": None}
    if suffix == ".pdf":
        return {"Creator": None, "Producer": None, "CreationDate": None}
    return {"Date": None, "Creator": None} if suffix == ".svg" else {}


# ---- command line -------------------------------------------------------------------------
DESCRIPTION = """\
Draw a patient's emotional heat maps over days or weeks from the store.

For every day (or ISO week) of the period: a circumplex heat map of where the
patient's speech sat (valence left-right, arousal bottom-up), all on one
colour scale; below them, trend lines of the tone (mean valence and arousal,
intensity, dispersion, entropy, quadrant shares, speech time) with 95 %
intervals; and a table of the sessions. The JSON output holds the same numbers.

A session counts on the day it started (in --tz, default local time). Points
are weighted by segment duration x confidence, as on the live dashboard.

examples:
  mood-monitor report --patient P017 --out p017.png                 # the last 14 days
  mood-monitor report --patient P017 --days 28 --by week --out p017.pdf
  mood-monitor report --patient P017 --from 2024-03-01 --to 2024-03-14 --out r.png --out r.json
  mood-monitor report --patient P017 --db /elsewhere/mood.sqlite --tz UTC --out r.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mood-monitor report", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patient", required=True, metavar="ID",
                   help="pseudonymous patient id (see: mood-monitor data patients)")
    period = p.add_argument_group("period (default: the last 14 days up to today)")
    period.add_argument("--days", type=int, metavar="N", help="the last N calendar days (up to --to, default today)")
    period.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day (inclusive)")
    period.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day (inclusive; default today)")
    period.add_argument("--by", choices=["day", "week", "auto"], default="auto",
                        help="one heat map per day or per ISO week (default auto: days up to 35 days, else weeks)")
    period.add_argument("--tz", default="local", metavar="ZONE",
                        help="time zone that decides the calendar day: local (default), UTC, or e.g. Europe/Berlin")
    look = p.add_argument_group("heat maps")
    look.add_argument("--bins", type=int, default=24, metavar="N", help="cells per axis (default: 24)")
    look.add_argument("--smoothing", type=float, default=1.0, metavar="CELLS",
                      help="Gaussian blur in cells (default: 1; 0 = none)")
    look.add_argument("--neutral-radius", type=float, default=0.2, metavar="R",
                      help="speech closer than R to the centre counts as near neutral (default: 0.2)")
    look.add_argument("--title", help="figure title (default: patient and period)")
    store = p.add_argument_group("store")
    store.add_argument("--db", metavar="PATH", help="SQLite file (default: DATA_DIR/mood-monitor.sqlite)")
    store.add_argument("--data-dir", metavar="DIR",
                       help="data folder (default: $MOOD_MONITOR_DATA_DIR or ~/.local/share/mood-monitor)")
    p.add_argument("--out", action="append", required=True, metavar="FILE",
                   help="report.png, report.pdf, report.svg or report.json; repeat to write several")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from monitor.history.store import StoreError, open_existing

    for out in args.out:
        if Path(out).suffix.lower() not in (".png", ".pdf", ".svg", ".json"):
            parser.error(f"--out {out}: use a .png, .pdf, .svg or .json file name")
    if args.days is not None and args.start and args.end:
        parser.error("give --days or --from/--to, not all three")
    try:
        zone = resolve_tz(args.tz)
        days = args.days if args.days is not None else (None if args.start and args.end else 14)
        start, end = period_bounds(days=days, start=args.start, end=args.end, tz=zone)
        config = AggregateConfig(bins=args.bins, smoothing_sigma=args.smoothing, neutral_radius=args.neutral_radius)
    except ValueError as exc:
        parser.error(str(exc))
    if config.bins < 2:
        parser.error("--bins must be at least 2")
    try:
        store = open_existing(args.db, args.data_dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with store:
        if not store.has_patient(args.patient):
            hint = ", ".join(store.patient_ids(limit=20)) or "none yet"
            print(f"error: no patient {args.patient!r} in {store.path} (patients: {hint})", file=sys.stderr)
            return 2
        by = args.by if args.by != "auto" else ("day" if (end - start).days < 35 else "week")
        history = build_history(store, args.patient, start, end, tz=zone, config=config, weeks=True,
                                session_detail=True, overall=True)
    history["by"] = by
    if not history["sessions"]:
        log.warning("patient %s has no sessions between %s and %s", args.patient, start, end)
    for out in args.out:
        written = write(history, out, by=by, title=args.title)
        print(written)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
