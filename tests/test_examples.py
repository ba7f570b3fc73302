"""The documented examples run: docs/examples/*.py and the README's three lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import DATA_ROOT, REPO

EXAMPLES = REPO / "docs" / "examples"


def run(args, cwd, timeout=600) -> str:
    env = {**os.environ, "MOOD_MONITOR_DATA": str(DATA_ROOT), "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_api_example_runs(ravdess_dir, tmp_path):
    out = run([str(EXAMPLES / "researcher_api.py")], cwd=tmp_path)
    for words in ("MoodModel(", "valence", "arousal", "prob_angry", "surprised"):
        assert words in out


def test_the_plot_example_draws_api_tables_and_live_sessions(ravdess_dir, tmp_path):
    out = run([str(EXAMPLES / "plot_circumplex.py"), "--out", str(tmp_path / "api.png")], cwd=tmp_path)
    assert "16 points" in out and (tmp_path / "api.png").stat().st_size > 10_000

    session = tmp_path / "points.jsonl"  # a live session's JSONL, as `mood-monitor --jsonl` writes it
    labels = ["neutral", "happy", "sad", "angry"]
    records = [{"type": "session", "session": "s1", "labels": labels, "model_id": "m"}]
    for i, (v, a) in enumerate([(0.5, 0.5), (-0.4, 0.6), (-0.5, -0.5)]):
        probs = dict(zip(labels, [0.1, 0.2, 0.3, 0.4][i:] + [0.1, 0.2, 0.3, 0.4][:i], strict=True))
        records.append({"type": "point", "session": "s1", "index": i, "t_start": i, "t_end": i + 1.0,
                        "valence": v, "arousal": a, "confidence": max(probs.values()), "probabilities": probs})
    records.append({"type": "mark", "session": "s1", "t": 1.5, "text": "topic change"})
    session.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = run([str(EXAMPLES / "plot_circumplex.py"), str(session), "--out", str(tmp_path / "live.png")],
              cwd=tmp_path)
    assert "3 points" in out and (tmp_path / "live.png").exists()


def test_the_readme_example_prints_a_table(ravdess_dir):
    """README's three lines, run as they are from the corpora's folder (the clip path in it is relative)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no <!-- api-example --> block"
    code = block.group(1)
    assert len(code.strip().splitlines()) == 3
    clip = re.search(r'"(ravdess/[^"]+\.wav)"', code)
    if clip is None or not (DATA_ROOT / clip.group(1)).is_file():
        pytest.fail(f"the README example's clip is not in the corpora: {clip and clip.group(1)}")
    out = run(["-c", code], cwd=DATA_ROOT)
    assert re.search(r"^file\s+start\s+end", out, re.M) and "valence" in out
