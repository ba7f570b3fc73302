"""calibration.evaluate and calibration.fit: library, CLIs, files written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from calibration import evaluate as E
from calibration import fit as F
from calibration.anchors import ANCHOR_SETS
from calibration.data import (head_predictions, load_embeddings, parse_ravdess_name, save_embeddings,
                              select_split)
from calibration.metrics import anchor_targets
from calibration.synthetic import make_clusters

ANCHORS = dict(ANCHOR_SETS["ravdess"].anchors)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def export(path, n_train=320, n_test=160, n_val=80, seed=5):
    """A synthetic exported-embedding file in the Stage I -> Stage II format."""
    X, y = make_clusters(n_train + n_val + n_test, ANCHORS, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(y)
    target = anchor_targets(y, ANCHORS)
    save_embeddings(
        path,
        embeddings=X,
        labels=y,
        speakers=np.asarray([f"spk{i % 8}" for i in range(n)], dtype=str),
        split=np.asarray(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=str),
        corpus=np.asarray("ravdess"),
        valence=target[:, 0] + rng.normal(0, 0.1, n),
        arousal=target[:, 1] + rng.normal(0, 0.1, n),
        intensity=np.asarray(rng.choice(["normal", "strong"], n), dtype=str),
        sentence=np.asarray(rng.choice(["01", "02"], n), dtype=str),
        pred=np.where(rng.random(n) < 0.8, y, "neutral").astype(str),
    )
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    npz = export(root / "emb.npz")
    folder = root / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text('{"owner": "lead"}\n')
    assert F.main([str(npz), "--bundle", str(folder), "--random-state", "0", "--align", "similarity"]) == 0
    return npz, folder


def test_fit_cli_writes_reducer_and_leaves_bundle_json(bundle):
    npz, folder = bundle
    assert (folder / "bundle.json").read_text() == '{"owner": "lead"}\n'
    meta = json.loads((folder / "reducer.json").read_text())
    assert meta["n_train"] == 320  # train split only
    assert meta["params"]["anchors"] == "ravdess"  # 'auto' picked the corpus' own set
    assert meta["params"]["align"] == "similarity"
    assert meta["align_source"] == "held-out (80 points)"  # auto: the val rows
    with np.load(folder / "reducer.npz", allow_pickle=False) as z:
        assert z["X_train"].shape == (320, 100)


def test_evaluate_cli_writes_strict_json_and_png(bundle, tmp_path, capsys):
    npz, folder = bundle
    out = tmp_path / "eval"
    assert E.main(["--bundle", str(folder), "--embeddings", str(npz), "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())  # strict: NaN would not parse as None
    assert res["n"] == 160 and res["method"] == "fast"
    for key in ("anchor_agreement", "circular_order", "centroid_drift", "separation", "head",
                "ccc_labels", "intensity"):
        assert res[key] is not None, key
    assert res["anchor_agreement"]["valence"] > 0.8 and res["anchor_agreement"]["arousal"] > 0.8
    assert res["circular_order"]["fisher_lee"] > 0.9
    assert 0.0 <= res["head"]["uar"] <= 1.0
    assert res["intensity"]["n_pairs"] > 0
    assert (out / "circumplex.png").read_bytes()[:8] == PNG_MAGIC
    assert "anchor agreement" in capsys.readouterr().out


def test_evaluate_umap_method_and_split(bundle, tmp_path):
    npz, folder = bundle
    out = tmp_path / "umap"
    assert E.main(["--bundle", str(folder), "--embeddings", str(npz), "--split", "train",
                   "--method", "umap", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["n"] == 320 and res["method"] == "umap"


def test_evaluate_points_on_anchors_is_perfect_and_missing_inputs_are_none():
    labels = np.asarray(list(ANCHORS) * 10)
    pts = anchor_targets(labels, ANCHORS)
    res = E.evaluate_points(pts, labels, ANCHORS)
    assert res["anchor_agreement"]["mean"] == pytest.approx(1.0)
    assert res["circular_order"]["fisher_lee"] == pytest.approx(1.0)
    assert res["centroid_drift"]["mean"] == pytest.approx(0.0)
    assert res["head"] is None and res["ccc_labels"] is None and res["intensity"] is None
    json.dumps(E.to_jsonable(res), allow_nan=False)


def test_plot_circumplex_writes_png(tmp_path):
    labels = np.asarray(list(ANCHORS) * 20)
    pts = anchor_targets(labels, ANCHORS) + np.random.default_rng(0).normal(0, 0.05, (len(labels), 2))
    path = E.plot_circumplex(pts, labels, ANCHORS, tmp_path / "c.png", title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_embeddings_file_rules(tmp_path):
    npz = export(tmp_path / "e.npz", n_train=40, n_test=16, n_val=8)
    data = load_embeddings(npz)
    assert select_split(data, "test")["embeddings"].shape == (16, 100)
    assert str(select_split(data, "test")["corpus"]) == "ravdess"
    # The training exporter's spelling: probabilities + classes, per-row corpus, NaN where unlabelled.
    lead = tmp_path / "lead.npz"
    np.savez_compressed(lead, embeddings=np.zeros((3, 4), np.float32), labels=np.array(["ang", "sad", "neu"]),
                        speakers=np.array(["a", "b", "c"]), split=np.array(["test"] * 3),
                        corpus=np.array(["iemocap"] * 3), valence=np.array([0.1, np.nan, -0.2]),
                        probabilities=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32),
                        classes=np.array(["angry", "sad"]), keys=np.array(["k1", "k2", "k3"]))
    got = load_embeddings(lead)
    assert got["labels"].tolist() == ["angry", "sad", "neutral"]
    assert head_predictions(got).tolist() == ["angry", "sad", "angry"]
    assert np.isnan(got["valence"][1])
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.zeros((2, 3), np.float32), labels=np.array(["happy", "sad"], dtype=object),
             speakers=np.array(["a", "b"]), split=np.array(["train", "test"]))
    with pytest.raises(ValueError, match="fixed-width"):
        load_embeddings(bad)
    with pytest.raises(ValueError, match="split"):
        save_embeddings(tmp_path / "x.npz", embeddings=np.zeros((1, 3)), labels=["sad"], speakers=["a"],
                        split=["holdout"])


@pytest.mark.parametrize("module", ["calibration.evaluate", "calibration.fit"])
def test_cli_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "--bundle" in out.stdout
    assert "umap" in out.stdout.lower()


RAVDESS_NAMES = ["03-01-05-01-01-01-01.wav", "03-01-05-02-01-01-01.wav", "03-01-04-01-02-01-01.wav"]


def _ravdess_audio(folder):
    """Noise clips at 8 kHz under RAVDESS names (labels, intensity, sentence and speaker come from the names)."""
    import soundfile as sf

    audio = folder / "Actor_01"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(RAVDESS_NAMES):
        sf.write(audio / name, (0.1 * rng.standard_normal(8000 * (i + 1))).astype(np.float32), 8000)
    return folder


def test_audio_folder_runs_the_runtime_model_over_resampled_files(tmp_path):
    """``python -m training score``'s audio path: real files (8 kHz, resampled) through a real bundle's model."""
    from tests.bundles import egemaps_bundle
    from training.evaluate_audio import embed_audio_folder

    names = RAVDESS_NAMES
    _ravdess_audio(tmp_path / "audio")
    bundle = egemaps_bundle(tmp_path / "bundle")
    data = embed_audio_folder(bundle, tmp_path / "audio")
    assert data["embeddings"].shape == (3, 100) and np.isfinite(data["embeddings"]).all()
    assert data["labels"].tolist() == ["sad", "angry", "angry"]  # files in sorted order
    assert data["intensity"].tolist() == ["normal", "normal", "strong"]
    assert data["classes"].tolist() == ["neutral", "happy", "sad", "angry"]
    np.testing.assert_allclose(data["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert parse_ravdess_name(names[1])["speaker"] == "actor01"


def test_training_score_command_writes_the_report_of_a_bundle_on_audio(tmp_path, capsys):
    """``python -m training score``: the bundle's model over a folder, then calibration.evaluate's report."""
    from tests.bundles import egemaps_bundle
    from training.__main__ import main

    audio = _ravdess_audio(tmp_path / "audio")
    bundle = egemaps_bundle(tmp_path / "bundle")
    out = tmp_path / "report"
    assert main(["score", "--bundle", str(bundle), "--audio", str(audio), "--out", str(out), "--title", "t"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["method"] == "fast" and metrics["source"].startswith("audio")
    assert metrics["head"] is not None  # the model's predictions came along
    assert (out / "circumplex.png").read_bytes()[:8] == PNG_MAGIC
    assert "wrote" in capsys.readouterr().out
