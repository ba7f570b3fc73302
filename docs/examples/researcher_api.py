# %% [markdown]
# # Valence and arousal for recordings, as tables
#
# The researcher's API of mood-monitor in a few cells (a script in the "percent" format: run it with
# `python docs/examples/researcher_api.py`, or open it as a notebook with Jupytext or VS Code).
# It scores RAVDESS clips from `$MOOD_MONITOR_DATA` (default: `../shared/data` next to the repository).
# Every call returns a `pandas.DataFrame` on an audformat index: `file`, `start`, `end` (timedeltas), with
# the columns `valence`, `arousal`, `confidence` and one `prob_<class>` column per class. See docs/api.md.

# %%
import os
from pathlib import Path

import audformat
import pandas as pd
import soundfile as sf

from monitor import MoodModel

here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
DATA = Path(os.environ.get("MOOD_MONITOR_DATA", here.parents[2] / "shared" / "data"))
ACTOR = DATA / "ravdess" / "Actor_01"
CLIP = ACTOR / "03-01-05-02-01-01-01.wav"  # RAVDESS: emotion 05 (angry), strong intensity
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 8)

# %% [markdown]
# ## Load the model: the shipped default, a bundle folder, or a Hugging Face Hub repo id

# %%
model = MoodModel.from_pretrained("default")
print(model)
print("classes:", model.labels)

# %% [markdown]
# ## One file: one row per speech segment, cut as the live monitor cuts speech

# %%
table = model.process_file(CLIP)
print(table)

# %% [markdown]
# ## An array (any rate, any channel layout): the same numbers as the file

# %%
samples, rate = sf.read(CLIP)
from_array = model.process_signal(samples, rate, file=str(CLIP))
assert from_array.equals(table)
print(from_array[["valence", "arousal", "confidence"]])

# %% [markdown]
# ## A folder: every matching file, a progress bar, one table

# %%
folder = model.process_folder(ACTOR, pattern="03-01-0[1-8]-01-01-*.wav")  # the eight emotions, normal intensity
codes = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
         "07": "disgust", "08": "surprised"}
emotion = [codes[Path(f).name.split("-")[2]] for f in folder.index.get_level_values("file")]
by_emotion = folder.groupby(emotion)[["valence", "arousal"]].mean().round(2)
print(by_emotion)

# %% [markdown]
# ## One value per file, and an audformat index of your own segments

# %%
whole_files = model.process_folder(ACTOR, pattern="03-01-0[1-8]-01-01-*.wav", segment=False)
print(whole_files[["valence", "arousal"]].round(2))

names = ["03-01-05-02-01-01-01.wav", "03-01-05-02-01-01-01.wav"]
index = audformat.segmented_index(names, starts=[0.5, 2.0], ends=[2.0, None])  # None: to the end of the file
print(model.process_index(index, root=ACTOR)[["valence", "arousal"]].round(2))
