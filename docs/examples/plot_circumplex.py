# %% [markdown]
# # Points on the circumplex with matplotlib
#
# Draws valence-arousal points on Russell's circumplex, coloured by their most likely class: from a table
# the API returns, from a `mood-monitor analyze` results file, or from a live session's JSONL
# (`mood-monitor --input session.wav --fast --jsonl points.jsonl`). Without an argument it scores a few
# RAVDESS clips first.
#
#     python docs/examples/plot_circumplex.py [results.csv | points.jsonl] [--out circumplex.png]

# %%
import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, no window
import matplotlib.pyplot as plt
import pandas as pd

from calibration.quadrants import NEUTRAL_RADIUS


def points_from(path: Path) -> pd.DataFrame:
    """valence, arousal and the top class of every point in an analyze table or a live session's JSONL."""
    if path.suffix == ".jsonl" and json.loads(path.open().readline()).get("type") == "session":
        records = [json.loads(line) for line in path.open()]
        points = [r for r in records if r["type"] == "point"]
        return pd.DataFrame({"valence": [p["valence"] for p in points], "arousal": [p["arousal"] for p in points],
                             "top": [max(p["probabilities"], key=p["probabilities"].get) for p in points]})
    from monitor.analyze import load_results

    return with_top_class(load_results(path).dropna(subset=["valence"]))


def with_top_class(table: pd.DataFrame) -> pd.DataFrame:
    probs = table.filter(like="prob_")
    return table.assign(top=probs.idxmax(axis=1).str.removeprefix("prob_"))


def plot_circumplex(points: pd.DataFrame, ax: plt.Axes, title: str = "") -> None:
    """The circumplex's square, its quadrants and neutral centre, and one dot per point."""
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.add_patch(plt.Circle((0, 0), NEUTRAL_RADIUS, fill=False, ls="--", color="0.6"))
    for label, group in points.groupby("top"):
        ax.scatter(group["valence"], group["arousal"], s=28, alpha=0.8, label=label)
    for x, y, text in ((0.97, 0.97, "pleasant\nhigh arousal"), (-0.97, 0.97, "unpleasant\nhigh arousal"),
                       (-0.97, -0.97, "unpleasant\nlow arousal"), (0.97, -0.97, "pleasant\nlow arousal")):
        ax.text(x, y, text, ha="right" if x > 0 else "left", va="top" if y > 0 else "bottom", fontsize=7,
                color="0.45")
    ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel="valence", ylabel="arousal", aspect="equal", title=title)
    ax.legend(title="top class", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))


# %%
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("table", nargs="?", help="an analyze results file or a live session's JSONL")
parser.add_argument("--out", default="circumplex.png", help="the picture to write (default: circumplex.png)")
args, _ = parser.parse_known_args()  # parse_known_args: notebooks pass their own arguments

if args.table:
    points, title = points_from(Path(args.table)), Path(args.table).name
else:
    from monitor import MoodModel

    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    data = Path(os.environ.get("MOOD_MONITOR_DATA", here.parents[2] / "shared" / "data"))
    model = MoodModel.from_pretrained("default")
    table = model.process_folder(data / "ravdess", pattern="Actor_0[1-2]/03-01-0[3457]-0[12]-01-01-*.wav")
    points, title = with_top_class(table), "RAVDESS actors 1-2: happy, sad, angry, fearful"

# %%
fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
plot_circumplex(points, ax, title)
fig.savefig(args.out, dpi=110)
print(f"{len(points)} points -> {args.out}")
