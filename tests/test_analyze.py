"""``mood-monitor analyze``: a folder into one table; bad files reported, batches resumed, results private."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from monitor.analyze import EXIT_OK, EXIT_SETUP, load_results, read_flat
from monitor.cli import main
from monitor.model.audio_format import SAMPLE_RATE

CLIPS = ["03-01-01-01-01-01-01.wav", "03-01-05-02-01-01-01.wav", "03-01-08-01-02-01-01.wav"]


@pytest.fixture()
def folder(ravdess_dir, tmp_path):
    """Two real clips, a file that is not audio, and a silent one, in a nested folder."""
    root = tmp_path / "in"
    (root / "day2").mkdir(parents=True)
    shutil.copy(ravdess_dir / "Actor_01" / CLIPS[0], root / CLIPS[0])
    shutil.copy(ravdess_dir / "Actor_01" / CLIPS[1], root / "day2" / CLIPS[1])
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt nothing useful")
    sf.write(str(root / "day2" / "quiet.flac"), np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    (root / "notes.txt").write_text("not audio, not picked up")
    return root


@pytest.fixture(scope="module")
def mood():
    from monitor import MoodModel

    return MoodModel.from_pretrained("egemaps", device="cpu", progress=False)


def test_a_folder_with_a_bad_file_completes_and_resumes(folder, tmp_path, capsys, mood, ravdess_dir):
    out = tmp_path / "results" / "table.csv"
    assert main(["analyze", "--model", "egemaps", str(folder), "--out", str(out), "--no-progress"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "analyzed 4 files" in err and "1 failed" in err and "1 without speech" in err
    assert "failed: " in err and "broken.wav" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # clinical data: private to the user

    flat = read_flat(out)
    files = set(flat["file"])
    assert files == {str(folder / CLIPS[0]), str(folder / "day2" / CLIPS[1]), str(folder / "broken.wav"),
                     str(folder / "day2" / "quiet.flac")}
    broken = flat[flat["file"] == str(folder / "broken.wav")]
    assert len(broken) == 1 and broken["valence"].isna().all() and "cannot read" in broken["error"].iloc[0]
    assert (flat["model"] == mood.model_id).all()

    # the numbers are the API's, the index comes back from the file
    table = load_results(out)
    good = [str(folder / CLIPS[0]), str(folder / "day2" / CLIPS[1])]
    expected = mood.process_files(good)
    got = table[table.index.get_level_values("file").isin(good)]
    pd.testing.assert_frame_equal(got[expected.columns], expected)

    # resumed: nothing left to do, then only the new file
    assert main(["analyze", "--model", "egemaps", str(folder), "--out", str(out)]) == EXIT_OK
    assert "nothing to do" in capsys.readouterr().err
    shutil.copy(ravdess_dir / "Actor_01" / CLIPS[2], folder / CLIPS[2])
    assert main(["analyze", "--model", "egemaps", str(folder), "--out", str(out), "--no-progress"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "4 of 5 files are already in it" in err and "analyzed 1 files" in err
    again = read_flat(out)
    assert len(again) == len(flat) + 1 and again["file"].iloc[-1] == str(folder / CLIPS[2])


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_jsonl_tables(folder, tmp_path, suffix, capsys):
    out = tmp_path / f"table{suffix}"
    assert main(["analyze", "--model", "egemaps", str(folder / CLIPS[0]), str(folder / "broken.wav"), "--out", str(out),
                 "--no-segment", "--no-progress"]) == EXIT_OK
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    table = load_results(out)
    assert len(table) == 2 and list(table.columns)[-2:] == ["error", "model"]
    assert table["valence"].notna().sum() == 1 and table["error"].notna().sum() == 1
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows[1]["valence"] is None and rows[0]["error"] is None  # strict JSON: null, not NaN
    assert main(["analyze", "--model", "egemaps", str(folder / CLIPS[0]), str(folder / "day2"), "--out", str(out),
                 "--no-segment", "--no-progress"]) == EXIT_OK
    assert "1 of 3 files are already in it" in capsys.readouterr().err
    assert len(load_results(out)) == 4
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_torn_last_line_is_scored_again(folder, tmp_path, capsys, suffix):
    out = tmp_path / f"table{suffix}"
    args = ["analyze", str(folder / CLIPS[0]), str(folder / "day2" / CLIPS[1]), "--out", str(out), "--no-progress"]
    assert main(args) == EXIT_OK
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    last_file = str(folder / "day2" / CLIPS[1])
    assert last_file in lines[-1] and len(lines) == (3 if suffix == ".csv" else 2)
    cut = lines[-1].index(last_file) + len(last_file) + 8  # past the name, inside the numbers
    out.write_text("".join(lines[:-1]) + lines[-1][:cut])  # a crash in the middle of the last write
    assert main(args) == EXIT_OK
    err = capsys.readouterr().err
    assert "incomplete line" in err and "1 of 2 files are already in it" in err
    assert out.read_text() == whole

    # cut inside the file's name: which file it was is unknown, so the last complete one is scored again too
    out.write_text("".join(lines[:-1]) + lines[-1][:12])
    assert main(args) == EXIT_OK
    assert "analyzed 2 files" in capsys.readouterr().err and out.read_text() == whole


def test_setup_errors_exit_2_and_write_nothing(folder, tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert main(["analyze", "--model", "egemaps", str(tmp_path / "missing"), "--out", str(out)]) == EXIT_SETUP
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["analyze", str(folder), "--out", str(out), "--model", str(tmp_path / "no-model")]) == EXIT_SETUP
    assert "model bundle not found" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--model", "egemaps", str(folder), "--out", str(tmp_path / "table.xlsx")])
    assert exit_info.value.code == 2
    assert ".csv, .parquet, .jsonl" in capsys.readouterr().err

    # another model's table is not mixed into
    other = tmp_path / "other.csv"
    other.write_text("file,start,end,valence,arousal,confidence,error,model\nx.wav,0,1,0,0,1,,other@1\n")
    assert main(["analyze", "--model", "egemaps", str(folder / CLIPS[0]), "--out", str(other)]) == EXIT_SETUP
    assert "give another --out" in capsys.readouterr().err
    os.chmod(other, 0o644)


def test_help_lists_the_batch_options(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--segment", "--no-segment", "--jobs", "--model", "--patient", "--baseline"):
        assert flag in text


@pytest.mark.parametrize("failure, code", [(KeyboardInterrupt, 130), (MemoryError, 1)])
def test_a_stopped_batch_keeps_what_was_done(folder, tmp_path, capsys, monkeypatch, failure, code):
    from monitor.api import MoodModel

    real = MoodModel.iter_files

    def stops_after_one(self, files, *args, **kwargs):
        for i, table in enumerate(real(self, files, *args, **kwargs)):
            if i == 1:
                raise failure("stop")
            yield table

    monkeypatch.setattr(MoodModel, "iter_files", stops_after_one)
    out = tmp_path / "table.csv"
    args = ["analyze", str(folder / CLIPS[0]), str(folder / "day2" / CLIPS[1]), "--out", str(out), "--no-progress"]
    assert main(args) == code
    err = capsys.readouterr().err
    assert "stopped after 1 files" in err and "run the same command again" in err
    assert set(read_flat(out)["file"]) == {str(folder / CLIPS[0])}
    monkeypatch.setattr(MoodModel, "iter_files", real)
    assert main(args) == EXIT_OK
    assert "1 of 2 files are already in it" in capsys.readouterr().err
