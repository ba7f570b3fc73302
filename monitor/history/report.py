"""``mood-monitor report``: a patient's emotional heat maps and tone over days and weeks.

The report is a set of printable pages (A4 portrait, or US Letter with
``--paper letter``), all drawn from the dict that the JSON output holds
(``monitor.history.aggregate.build_history``), so the picture and the numbers
cannot disagree:

1. the heading, with whether the speaker was enrolled (without enrolment,
   placement is uncalibrated, and the page says so), and small multiples:
   one circumplex heat map per day or ISO week *that had speech*, all on one
   colour scale, in the dashboard's colours (viridis) with the circumplex's
   affect words;
2. trend lines of the tone metrics with their 95 % intervals, quadrant shares
   in the dashboard's quadrant names, and the session marks on the time lines;
3. the table of sessions (paged) and the marks' text.

A PDF holds one page per figure; a PNG stacks the pages top to bottom; an SVG
is written one file per page (``name.svg``, ``name-2.svg``, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from calibration.quadrants import AFFECT_WORDS, QUADRANT_NAMES
from monitor.history.aggregate import AggregateConfig, build_history, period_bounds, resolve_tz, series
from monitor.history.target import add_db_argument
from monitor.live.private import open_private, write_private_text

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DPI = 100
#: Page sizes in inches (portrait): A4 is 210 x 297 mm (595 x 842 pt), Letter 8.5 x 11 in (612 x 792 pt).
PAPER_IN: dict[str, tuple[float, float]] = {"a4": (210 / 25.4, 297 / 25.4), "letter": (8.5, 11.0)}
MARGIN_IN = 0.55
HEAD_IN = 1.55  # title, summary and calibration lines on the first page
PANEL_COLS = 4
PANEL_IN = 1.95  # one heat-map row (title included)
TABLE_ROW_IN = 0.22
MARK_LINE_IN = 0.19
PAGE_GAP_PX = 16  # grey gap between stacked pages in a PNG
CMAP = "viridis"  # the dashboard's colour map (monitor/serve/static/dashboard.js)

QUADRANT_COLOURS = {  # the quadrant names themselves come from calibration.quadrants (the dashboard's words)
    "high_arousal_positive": "#e69f00",
    "high_arousal_negative": "#d55e00",
    "low_arousal_negative": "#0072b2",
    "low_arousal_positive": "#009e73",
    "neutral": "#bbbbbb",
}
QUADRANT_STYLE = [(k, QUADRANT_NAMES[k], QUADRANT_COLOURS[k]) for k in QUADRANT_NAMES]  # (key, label, colour)
TABLE_COLUMNS = ["date", "start", "minutes", "points", "speech s", "valence", "arousal", "ended", "calibration",
                 "model"]


# ---- what goes on the pages ---------------------------------------------------------------
def page_size(paper: str = "a4") -> tuple[float, float]:
    """Width and height of one page in inches (a PNG page is this times ``DPI`` pixels)."""
    try:
        return PAPER_IN[paper.lower()]
    except KeyError:
        raise ValueError(f"unknown paper {paper!r}; use one of {sorted(PAPER_IN)}") from None


def _panels(history: dict[str, Any], by: str) -> list[dict[str, Any]]:
    """The days (or weeks) that had speech, in order: empty ones get no tile (they are counted in the heading)."""
    entries: list[dict[str, Any]] = history["weeks" if by == "week" else "days"]
    return [e for e in entries if e["metrics"]["points"]]


def _panel_rows_per_page(paper: str, first: bool) -> int:
    _, height = page_size(paper)
    usable = height - 2 * MARGIN_IN - (HEAD_IN + 0.55 if first else 0.3)  # 0.55: the colour bar under the tiles
    return max(1, int(usable // PANEL_IN))


def _table_rows_per_page(paper: str) -> int:
    _, height = page_size(paper)
    return max(5, int((height - 2 * MARGIN_IN - 1.6) // TABLE_ROW_IN))  # 1.6: heading, models key, footer


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def model_keys(history: dict[str, Any]) -> dict[str, str]:
    """Model id -> a short key ("M1", ...) for the table; the page lists every key with the full, untruncated id."""
    keys: dict[str, str] = {}
    for s in history["sessions"]:
        model = str(s.get("model_id", ""))
        if model not in keys:
            keys[model] = f"M{len(keys) + 1}"
    return keys


def session_table_cells(history: dict[str, Any]) -> list[list[str]]:
    """The table's text, row by row (tests compare it with the JSON)."""
    keys = model_keys(history)
    out = []
    for s in history["sessions"]:
        start = datetime.fromisoformat(s["started_at"])
        minutes = s.get("minutes")  # the audio the session covered (a --fast replay is as long as its recording)
        if minutes is None and s["ended_at"]:
            minutes = (datetime.fromisoformat(s["ended_at"]) - start).total_seconds() / 60.0
        state = {"clean": "ok", "recovered": "recovered", None: "running"}.get(s.get("end_state"), s.get("end_state"))
        calibration = (s.get("calibration") or {}).get("label", "uncalibrated")
        out.append([s["date"], start.strftime("%H:%M"), _fmt(minutes, ".1f"), str(s["points"]),
                    _fmt(s["speech_seconds"], ".1f"), _fmt(s["mean_valence"], "+.2f"), _fmt(s["mean_arousal"], "+.2f"),
                    state, calibration, keys[str(s.get("model_id", ""))]])
    return out


def calibration_summary(history: dict[str, Any]) -> str:
    """One plain sentence on enrolment across the report's sessions (uncalibrated placement is said outright)."""
    sessions = history["sessions"]
    if not sessions:
        return "Speaker calibration: no sessions in this period."
    enrolled = sum(1 for s in sessions if (s.get("calibration") or {}).get("enrolled"))
    if enrolled == len(sessions):
        return (f"Speaker calibration: enrolled in all {len(sessions)} sessions; placement is relative to the "
                "speaker's own calm voice.")
    if enrolled == 0:
        return (f"Speaker calibration: NOT ENROLLED in any of the {len(sessions)} sessions. Placement is "
                "uncalibrated: it uses population averages, not this speaker's own calm voice.")
    return (f"Speaker calibration: enrolled in {enrolled} of {len(sessions)} sessions. Placement in the other "
            f"{len(sessions) - enrolled} is uncalibrated (population averages; see the table's calibration column).")


def mark_rows(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The marks of the report's sessions in time order, numbered: ``{"n", "at", "session", "t", "text"}``."""
    rows = []
    for s in history["sessions"]:
        for m in s.get("mark_list") or []:
            rows.append({"at": datetime.fromisoformat(m["at"]), "session": s["session_id"], "t": float(m["t"]),
                         "text": str(m["text"]), "date": s["date"]})
    rows.sort(key=lambda r: (r["at"], r["session"], r["t"]))
    for n, r in enumerate(rows, start=1):
        r["n"] = n
    return rows


# ---- drawing ------------------------------------------------------------------------------
def _page(paper: str) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=page_size(paper), dpi=DPI)


def _frac(fig: Figure, x_in: float, y_in_from_top: float) -> tuple[float, float]:
    """Inches (from the left, from the top) as figure fractions."""
    w, h = fig.get_size_inches()
    return x_in / w, 1 - y_in_from_top / h


def _circumplex_axes(ax: Axes, show_x: bool, show_y: bool, words: bool = True) -> None:
    theta = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(theta), np.sin(theta), color="#888888", lw=0.5, ls="--")
    ax.axhline(0, color="#888888", lw=0.5)
    ax.axvline(0, color="#888888", lw=0.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_xticks([-1, 0, 1] if show_x else [])
    ax.set_yticks([-1, 0, 1] if show_y else [])
    ax.tick_params(labelsize=6, length=2)
    if show_x:
        ax.set_xlabel("valence", fontsize=7, labelpad=1)
    if show_y:
        ax.set_ylabel("arousal", fontsize=7, labelpad=1)
    if words:  # the circumplex's affect words, as on the dashboard, just inside the circle
        for word, deg in AFFECT_WORDS:
            r = math.radians(deg)
            ax.text(0.8 * math.cos(r), 0.8 * math.sin(r), word, fontsize=4.2, ha="center", va="center",
                    color="#222222", gid=f"word:{word}",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})


def _heading(fig: Figure, history: dict[str, Any], by: str, title: str | None) -> None:
    n_periods = len(history["weeks" if by == "week" else "days"])
    spoken = len(_panels(history, by))
    n_pts = sum(d["metrics"]["points"] for d in history["days"])
    x0, y = _frac(fig, MARGIN_IN, MARGIN_IN)
    fig.text(x0, y, title or f"Patient {history['patient']}: {history['from']} to {history['to']}", fontsize=14,
             va="top", weight="bold")
    unit = "weeks" if by == "week" else "days"
    lines = [
        f"{len(history['sessions'])} sessions, {n_pts} speech segments; speech on {spoken} of {n_periods} {unit} "
        f"(days in {history['tz']} time).",
        f"Heat maps: share of each {by}'s speech (duration x confidence) per cell, one colour scale; "
        f"{unit} without speech are not drawn.",
        "Intervals: 95 % t intervals treating segments as independent (a lower bound on the uncertainty).",
    ]
    for k, line in enumerate(lines):
        fig.text(x0, _frac(fig, 0, MARGIN_IN + 0.42 + 0.17 * k)[1], line, fontsize=7.5, va="top", color="#444444")
    calibrated = all((s.get("calibration") or {}).get("enrolled") for s in history["sessions"])
    fig.text(x0, _frac(fig, 0, MARGIN_IN + 1.0)[1], "\n".join(textwrap.wrap(calibration_summary(history), 115)),
             fontsize=8, va="top", gid="calibration", color="#1a1a1a" if calibrated else "#8a1c00",
             bbox={"boxstyle": "round,pad=0.3", "fc": "#eef6ee" if calibrated else "#fff1e6", "ec": "#bbbbbb"})


def _panel_pages(history: dict[str, Any], by: str, title: str | None, paper: str) -> list[Figure]:
    """The heading and the heat-map tiles (4 a row), continued on further pages when there are many."""
    panels = _panels(history, by)
    vmax = history.get("weeks_scale_max" if by == "week" else "scale_max") or 1.0
    width, _ = page_size(paper)
    tile_w = (width - 2 * MARGIN_IN - 0.3) / PANEL_COLS
    pages: list[Figure] = []
    i = 0
    image = None
    while True:
        fig = _page(paper)
        first = not pages
        if first:
            _heading(fig, history, by, title)
        top = MARGIN_IN + (HEAD_IN if first else 0.0)
        rows = _panel_rows_per_page(paper, first)
        chunk = panels[i:i + rows * PANEL_COLS]
        if not chunk and first:
            x, y = _frac(fig, width / 2, top + 1.0)
            fig.text(x, y, "no speech in this period", ha="center", fontsize=10, color="#777777")
        for k, entry in enumerate(chunk):
            r, c = divmod(k, PANEL_COLS)
            left = MARGIN_IN + 0.3 + c * tile_w
            y_top = top + 0.3 + r * PANEL_IN
            x, y = _frac(fig, left + 0.05, y_top + PANEL_IN - 0.25)
            ax = fig.add_axes((x, y, (tile_w - 0.15) / width, (PANEL_IN - 0.45) / fig.get_size_inches()[1]))
            grid = np.asarray(entry["heatmap"]["grid"], dtype=np.float64)
            shown = np.ma.masked_less(grid, vmax * 1e-3)  # empty cells stay white
            image = ax.imshow(shown, origin="lower", extent=(-1, 1, -1, 1), cmap=CMAP, vmin=0.0, vmax=vmax,
                              interpolation="nearest", gid=f"heatmap:{entry.get('date', entry.get('week'))}")
            last_row = k + PANEL_COLS >= len(chunk)
            _circumplex_axes(ax, show_x=last_row, show_y=(c == 0))
            m = entry["metrics"]
            ax.set_title(f"{_panel_label(entry, by)}\n{m['points']} seg, {m['speech_seconds'] / 60:.1f} min",
                         fontsize=7, pad=2)
        if first and image is not None:
            n_rows = max(1, math.ceil(len(chunk) / PANEL_COLS))
            x, y = _frac(fig, MARGIN_IN + 0.3, top + 0.3 + n_rows * PANEL_IN + 0.3)
            cax = fig.add_axes((x, y, 2.6 / width, 0.1 / fig.get_size_inches()[1]))
            bar = fig.colorbar(image, cax=cax, orientation="horizontal")
            bar.set_label(f"share of the {by}'s speech per cell (white: none)", fontsize=7)
            bar.ax.tick_params(labelsize=6)
        pages.append(fig)
        i += len(chunk)
        if i >= len(panels):
            return pages


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
    """The trend panels' shared x positions (the middle of each day, or mid-week) and periods."""

    def __init__(self, history: dict[str, Any], by: str):
        self.history = history
        self.periods = "weeks" if by == "week" else "days"
        self.entries: list[dict[str, Any]] = history[self.periods]
        if by == "week":  # plotted mid-week (Thursday noon), the ISO week's centre
            starts = [date.fromisoformat(e["start"]) for e in self.entries]
            days = [d - timedelta(days=d.weekday() - 3) for d in starts]
        else:
            days = [date.fromisoformat(e["date"]) for e in self.entries]
        # Noon, so that a mark (drawn at its time of day) falls inside its day's span; matplotlib's day numbers.
        self.x: list[float] = [_day_number(datetime(d.year, d.month, d.day, 12)) for d in days]
        self.xs = np.asarray(self.x, dtype=np.float64)

    def line(self, ax: Axes, metric: str, colour: str, label: str, marker: str = "o", ms: float = 3.5,
             with_band: bool = True) -> None:
        """Connect the periods that had speech (empty ones are skipped, not drawn as zero)."""
        y = _nan(series(self.history, metric, self.periods))
        ok = np.isfinite(y)
        if with_band:
            lo, hi = _band(self.entries, metric)
            ax.fill_between(list(self.xs[ok]), lo[ok], hi[ok], color=colour, alpha=0.18, lw=0,
                            label=f"{label}: 95 % interval")
        ax.plot(list(self.xs[ok]), y[ok], marker=marker, ms=ms, color=colour, label=label, gid=metric)


def _day_number(when: datetime) -> float:
    """matplotlib's date number (days) of a naive local time: the time lines' x unit."""
    import matplotlib.dates as mdates

    return float(mdates.date2num(when))  # type: ignore[no-untyped-call]


def _draw_marks(axes: Sequence[Axes], marks: list[dict[str, Any]]) -> None:
    """Each mark as a numbered dotted line at its date and time on every time line (the list gives the text)."""
    for ax in axes:
        for j, m in enumerate(marks):
            at = _day_number(m["at"].replace(tzinfo=None))  # the axis is in the report's zone (naive local times)
            ax.axvline(at, color="#7b3294", lw=0.8, ls=":", gid=f"mark:{m['n']}",
                       label="mark (number: see the list of marks)" if j == 0 else "_nolegend_")
    clusters: list[list[dict[str, Any]]] = []  # marks within an hour share one label ("1–3"), not a smudge
    for m in marks:
        if clusters and _day_number(m["at"].replace(tzinfo=None)) - _day_number(clusters[-1][0]["at"].replace(
                tzinfo=None)) < 1 / 24:
            clusters[-1].append(m)
        else:
            clusters.append([m])
    for group in clusters:
        at = _day_number(group[0]["at"].replace(tzinfo=None))
        label = str(group[0]["n"]) if len(group) == 1 else f"{group[0]['n']}–{group[-1]['n']}"
        axes[0].annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 1),
                         textcoords="offset points", ha="center", va="bottom", fontsize=6, color="#7b3294")


def _trends_page(history: dict[str, Any], by: str, paper: str, marks: list[dict[str, Any]]) -> Figure:
    """Tone means with intervals; range measures; quadrant shares and speech minutes; the marks on each."""
    import matplotlib.dates as mdates

    fig = _page(paper)
    width, height = page_size(paper)
    t = _Trends(history, by)
    left, right = (MARGIN_IN + 0.45) / width, 1 - (MARGIN_IN + 0.45) / width
    grid = fig.add_gridspec(3, 1, left=left, right=right, top=1 - (MARGIN_IN + 0.55) / height,
                            bottom=(MARGIN_IN + 1.0) / height, hspace=0.75)
    fig.text(MARGIN_IN / width, 1 - MARGIN_IN / height, f"Tone over the {'weeks' if by == 'week' else 'days'}",
             fontsize=12, weight="bold", va="top")

    ax1 = fig.add_subplot(grid[0])
    t.line(ax1, "mean_valence", "#0072b2", "mean valence")
    t.line(ax1, "mean_arousal", "#d55e00", "mean arousal")
    ax1.axhline(0, color="#888888", lw=0.6, label="0: neutral")
    ax1.set_ylim(-1, 1)
    ax1.set_ylabel("valence / arousal", fontsize=8)
    ax1.set_title("tone: weighted means with 95 % intervals", fontsize=8.5, loc="left", pad=10)

    ax2 = fig.add_subplot(grid[1], sharex=ax1)
    t.line(ax2, "intensity", "#cc79a7", "intensity (distance from neutral)")
    t.line(ax2, "dispersion", "#555555", "dispersion (spread around the mean)", marker="s", ms=3, with_band=False)
    t.line(ax2, "entropy", "#009e73", "entropy of the map (0 one cell, 1 even)", marker="^", ms=3, with_band=False)
    ax2.set_ylim(0, 1.2)
    ax2.set_title("range: intensity, dispersion, entropy", fontsize=8.5, loc="left", pad=10)

    ax3 = fig.add_subplot(grid[2], sharex=ax1)
    twin = _draw_shares(ax3, t, by)
    _draw_marks((ax1, ax2, ax3), marks)
    for ax in (ax1, ax2):  # below each plot, inside the page: every line and band has its entry
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.08), fontsize=6.5, ncol=3, frameon=False)
    handles, labels = ax3.get_legend_handles_labels()
    more_h, more_l = twin.get_legend_handles_labels()
    ax3.legend(handles + more_h, labels + more_l, loc="upper left", bbox_to_anchor=(0, -0.22), fontsize=6.5, ncol=3,
               frameon=False)
    for ax in (ax1, ax2, ax3, twin):
        ax.tick_params(labelsize=7)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.25)
    pad = 4.0 if by == "week" else 0.6  # days
    ax1.set_xlim(t.x[0] - pad, t.x[-1] + pad)
    step = max(1, math.ceil(len(t.x) / 10))  # a label under each day's (or week's) bar, at most 10
    ax3.set_xticks(t.x[::step])
    ax3.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))  # type: ignore[no-untyped-call]
    for ax in (ax1, ax2):
        ax.tick_params(labelbottom=False)
    return fig


def _draw_shares(ax3: Axes, t: _Trends, by: str) -> Axes:
    """Stacked quadrant shares per period (the dashboard's quadrant names), speech minutes on a twin axis."""
    bottom = np.zeros(len(t.entries))
    bar_width = 6.0 if by == "week" else 0.8
    for key_q, label, colour in QUADRANT_STYLE:
        share = np.nan_to_num(_nan(series(t.history, f"quadrant_share.{key_q}", t.periods)))
        ax3.bar(t.x, share, bottom=bottom, width=bar_width, color=colour, label=label, gid=f"quadrant:{key_q}")
        bottom += share
    ax3.set_ylim(0, 1)
    ax3.set_ylabel("share of speech", fontsize=8)
    ax3.set_title("quadrants (share of speech) and speech time", fontsize=8.5, loc="left", pad=10)
    twin = ax3.twinx()
    minutes = _nan([e["metrics"]["speech_seconds"] / 60.0 if e["metrics"]["points"] else None for e in t.entries])
    ok = np.isfinite(minutes)
    twin.plot(list(t.xs[ok]), minutes[ok], color="black", marker="D", ms=3, lw=1, label="speech minutes",
              gid="speech_minutes")
    twin.set_ylabel("speech (min)", fontsize=8)
    twin.set_ylim(0, max(1.0, float(np.nanmax(minutes)) * 1.15 if ok.any() else 1.0))
    return twin


def _table_pages(history: dict[str, Any], paper: str, marks: list[dict[str, Any]]) -> list[Figure]:
    """The sessions, paged, with the models' full ids under the table; then the marks' text, paged."""
    from matplotlib.transforms import Bbox

    width, height = page_size(paper)
    cells = session_table_cells(history)
    per_page = _table_rows_per_page(paper)
    keys = model_keys(history)
    pages: list[Figure] = []
    for first in range(0, max(1, len(cells)), per_page):
        fig = _page(paper)
        chunk = cells[first:first + per_page]
        heading = "Sessions" + (f" ({first + 1}–{first + len(chunk)} of {len(cells)})" if len(cells) > per_page else "")
        fig.text(MARGIN_IN / width, 1 - MARGIN_IN / height, heading, fontsize=12, weight="bold", va="top")
        if not chunk:
            fig.text(0.5, 0.8, "no sessions in this period", ha="center", fontsize=9, color="#777777")
            pages.append(fig)
            break
        rows_in = TABLE_ROW_IN * (len(chunk) + 1)
        top = MARGIN_IN + 0.45
        tax = fig.add_axes((MARGIN_IN / width, 1 - (top + rows_in) / height, 1 - 2 * MARGIN_IN / width,
                            rows_in / height))
        tax.axis("off")
        table = tax.table(cellText=chunk, colLabels=TABLE_COLUMNS, loc="upper center", cellLoc="center",
                          colWidths=[0.12, 0.07, 0.08, 0.07, 0.09, 0.09, 0.09, 0.1, 0.13, 0.08],
                          bbox=Bbox.from_bounds(0, 0, 1, 1))
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.set_gid("sessions" if first == 0 else f"sessions:{first}")
        key_lines = [f"{k} = {model}" for model, k in keys.items()]
        fig.text(MARGIN_IN / width, 1 - (top + rows_in + 0.15) / height,
                 "models: " + ";  ".join(key_lines) + ".  calibration: enrolled = placement relative to the "
                 "speaker's own calm voice; uncalibrated = population averages.",
                 fontsize=6.5, va="top", color="#444444", wrap=True, gid="models")
        pages.append(fig)
    lines_per_page = int((height - 2 * MARGIN_IN - 0.6) // MARK_LINE_IN)
    wrapped: list[str] = []
    for m in marks:
        when = m["at"].strftime("%a %d %b %H:%M")
        text = textwrap.wrap(f"{m['n']:>3}.  {when}  (session time {m['t']:.0f} s)  {m['text']}", 110,
                             subsequent_indent=" " * 8)
        wrapped += text
    for first in range(0, len(wrapped), lines_per_page):
        fig = _page(paper)
        fig.text(MARGIN_IN / width, 1 - MARGIN_IN / height, "Marks", fontsize=12, weight="bold", va="top")
        for k, line in enumerate(wrapped[first:first + lines_per_page]):
            fig.text(MARGIN_IN / width, 1 - (MARGIN_IN + 0.45 + k * MARK_LINE_IN) / height, line, fontsize=7,
                     va="top", family="monospace", gid="markline")
        pages.append(fig)
    return pages


def render_pages(history: dict[str, Any], by: str = "day", title: str | None = None,
                 paper: str = "a4") -> list[Figure]:
    """Draw the report as pages (matplotlib Figures of ``page_size(paper)``, Agg, nothing shown)."""
    page_size(paper)
    marks = mark_rows(history)
    pages = _panel_pages(history, by, title, paper)
    pages.append(_trends_page(history, by, paper, marks))
    pages += _table_pages(history, paper, marks)
    width, height = page_size(paper)
    for n, fig in enumerate(pages, start=1):  # a footer on every page: whose report, which page
        fig.text(0.5, MARGIN_IN * 0.5 / height, f"patient {history['patient']} · {history['from']} to {history['to']}"
                 f" · page {n} of {len(pages)}", ha="center", va="center", fontsize=6.5, color="#777777")
    return pages


def write(history: dict[str, Any], out: str | Path, by: str = "day", title: str | None = None,
          paper: str = "a4") -> Path:
    """Write ``out`` as PDF (one page per sheet), PNG (pages stacked), SVG (one file per page) or JSON."""
    out = Path(out)
    suffix = out.suffix.lower()
    # Clinical data: owner-only files (0600) and new folders (0700), like the store.
    if suffix == ".json":
        write_private_text(out, json.dumps(history, indent=1) + "\n")
    elif suffix == ".pdf":
        from matplotlib.backends.backend_pdf import PdfPages

        pages = render_pages(history, by=by, title=title, paper=paper)
        with open_private(out, "wb") as f, PdfPages(f, metadata=_metadata(".pdf")) as pdf:
            for fig in pages:
                pdf.savefig(fig)
    elif suffix == ".png":
        _write_png(render_pages(history, by=by, title=title, paper=paper), out)
    elif suffix == ".svg":
        for n, fig in enumerate(render_pages(history, by=by, title=title, paper=paper), start=1):
            target = out if n == 1 else out.with_name(f"{out.stem}-{n}{out.suffix}")
            with open_private(target, "wb") as f:
                fig.savefig(f, dpi=DPI, format="svg", metadata=_metadata(".svg"))
    else:
        raise ValueError(f"cannot write {out}: use a .png, .pdf, .svg or .json file name")
    return out


def _write_png(pages: list[Figure], out: Path) -> None:
    """The pages one under the other, with a grey gap: one image to scroll through."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    images = []
    for fig in pages:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # type: ignore[no-untyped-call]
        images.append(np.asarray(canvas.buffer_rgba())[..., :3])  # type: ignore[no-untyped-call]
    gap = np.full((PAGE_GAP_PX, images[0].shape[1], 3), 200, dtype=np.uint8)
    stacked = np.concatenate([part for img in images for part in (img, gap)][:-1], axis=0)
    with open_private(out, "wb") as f:
        Image.fromarray(stacked).save(f, format="PNG")


def png_size(n_pages: int, paper: str = "a4") -> tuple[int, int]:
    """The stacked PNG's (width, height) in pixels for ``n_pages`` pages."""
    width, height = page_size(paper)
    return int(width * DPI), n_pages * int(height * DPI) + (n_pages - 1) * PAGE_GAP_PX  # Agg truncates


def _metadata(suffix: str) -> dict[str, Any]:
    # Reproducible files: no creation date or software version stamped in.
    if suffix == ".pdf":
        return {"Creator": None, "Producer": None, "CreationDate": None}
    return {"Date": None, "Creator": None} if suffix == ".svg" else {}


# ---- command line -------------------------------------------------------------------------
DESCRIPTION = """\
Draw a patient's emotional heat maps over days or weeks from the store.

For every day (or ISO week) of the period: a circumplex heat map of where the
patient's speech sat (valence left-right, arousal bottom-up), all on one
colour scale (days without speech get no tile); then trend lines of the tone
(mean valence and arousal, intensity, dispersion, entropy, quadrant shares,
speech time) with 95 % intervals and the session marks on the time lines;
and a table of the sessions with the marks' text. The JSON output holds the same numbers.

A session counts on the day it started (in --tz, default local time). Points
are weighted by segment duration x confidence, as on the live dashboard.

examples:
  mood-monitor report --patient P017 --out p017.png                 # the last 14 days
  mood-monitor report --patient P017 --days 28 --by week --out p017.pdf
  mood-monitor report --patient P017 --from 2024-03-01 --to 2024-03-14 --out r.png --out r.json
  mood-monitor report --patient P017 --db /elsewhere/mood.sqlite --tz UTC --out r.json
  mood-monitor report --patient P017 --paper letter --out p017.pdf     # US Letter instead of A4

The PDF is printable pages (A4 portrait by default); a PNG stacks the same
pages; an SVG is one file per page. Every page says whether the speaker was
enrolled: without enrolment, placement is uncalibrated (population averages).
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
    look.add_argument("--paper", choices=sorted(PAPER_IN), default="a4",
                      help="page size of the PDF, PNG and SVG pages (default: a4, portrait)")
    store = p.add_argument_group("store")
    add_db_argument(store)
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
        written = write(history, out, by=by, title=args.title, paper=args.paper)
        print(written)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
