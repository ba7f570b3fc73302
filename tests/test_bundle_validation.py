"""Crafted bundles: every malformed one is refused at load with a message naming the file (exit 2), never run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

import calibration.safe_npz as safe_npz
from monitor.cli import EXIT_SETUP, main
from monitor.model.bundle import SHIPPED_BUNDLES, BundleError, load_bundle

SHIPPED = SHIPPED_BUNDLES["egemaps"]


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(SHIPPED, folder)
    return folder


def _edit_meta(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    change(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
    return change


MALFORMED_FIELDS = {
    "labels not a list": _set("labels", 5),
    "duplicate labels": _set("labels", ["angry", "angry", "sad", "happy", "neutral", "calm", "fearful", "disgust"]),
    "anchor out of range": _set("anchors.angry", [3.0, 0.2]),
    "anchor not a pair": _set("anchors.angry", "high"),
    "missing anchor": lambda meta: meta["anchors"].pop(meta["labels"][0]),
    "head input_dim a string": _set("head.input_dim", "88"),
    "head n_classes mismatch": _set("head.n_classes", 3),
    "head unknown key": _set("head.colour", "red"),
    "negative dropout": _set("head.dropout", -0.5),
    "hidden_dims not widths": _set("head.hidden_dims", [0]),
    "normalisation mode": _set("normalization.mode", "quantum"),
    "backbone not an object": _set("backbone", "egemaps"),
    "backbone escapes the bundle": _set("backbone", {"kind": "wavlm", "source": "bundle:../../.."}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FIELDS))
def test_malformed_fields_are_refused_with_the_file_named(bundle_copy, case):
    _edit_meta(bundle_copy, MALFORMED_FIELDS[case])
    with pytest.raises(BundleError, match="bundle.json|head.safetensors"):
        load_bundle(bundle_copy)


def test_nan_normalisation_is_refused(bundle_copy):
    arrays = dict(np.load(bundle_copy / "normalization.npz"))
    arrays["scale"][3] = np.nan
    np.savez(bundle_copy / "normalization.npz", **arrays)
    with pytest.raises(BundleError, match="normalization.npz.*NaN"):
        load_bundle(bundle_copy)


def test_wrongly_shaped_arrays_are_refused(bundle_copy):
    arrays = dict(np.load(bundle_copy / "normalization.npz"))
    arrays = {k: v[:40] for k, v in arrays.items()}
    np.savez(bundle_copy / "normalization.npz", **arrays)
    with pytest.raises(BundleError, match="shape"):
        load_bundle(bundle_copy)


def test_wrongly_shaped_head_weights_are_refused(bundle_copy):
    state = load_file(str(bundle_copy / "head.safetensors"))
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(state[name].shape[0], state[name].shape[1] + 1)
    save_file(state, str(bundle_copy / "head.safetensors"))
    with pytest.raises(BundleError, match="head.safetensors"):
        load_bundle(bundle_copy)


def test_a_zip_bomb_is_refused_before_it_inflates(bundle_copy, monkeypatch):
    bomb = np.zeros(16 * 1024 * 1024 // 8)  # 16 MB of zeros: about 16 kB compressed
    np.savez_compressed(bundle_copy / "reducer.npz", X_train=bomb)
    assert (bundle_copy / "reducer.npz").stat().st_size < 100_000
    monkeypatch.setattr(safe_npz, "MAX_NPZ_BYTES", 4 * 1024 * 1024)
    with pytest.raises(BundleError, match="inflate to 17 MB"):
        load_bundle(bundle_copy)


def test_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "x.npz", names=np.array(["a", "b"]))
    with pytest.raises(safe_npz.UnsafeArrayFile, match="not a number"):
        safe_npz.read_npz(tmp_path / "x.npz")


def test_the_cli_exits_2_naming_the_file(bundle_copy, tmp_path, capsys):
    _edit_meta(bundle_copy, _set("labels", 5))
    sf.write(str(tmp_path / "x.wav"), np.zeros(16000, dtype=np.float32), 16000)
    code = main(["--input", str(tmp_path / "x.wav"), "--fast", "--model", str(bundle_copy), "--no-store",
                 "--no-dashboard"])
    assert code == EXIT_SETUP
    assert "bundle.json" in capsys.readouterr().err


def test_a_bundle_whose_head_does_not_fit_its_backbone_is_a_setup_error(bundle_copy, tmp_path, ravdess_clips,
                                                                        capsys):
    """Self-consistent files, but the head takes 87 features while eGeMAPS gives 88: every segment would fail."""
    state = load_file(str(bundle_copy / "head.safetensors"))
    first = next(k for k, v in state.items() if v.ndim == 2 and v.shape[1] == 88)
    state[first] = state[first][:, :87].contiguous()
    save_file(state, str(bundle_copy / "head.safetensors"))
    arrays = {k: v[:87] for k, v in dict(np.load(bundle_copy / "normalization.npz")).items()}
    np.savez(bundle_copy / "normalization.npz", **arrays)
    _edit_meta(bundle_copy, _set("head.input_dim", 87))
    load_bundle(bundle_copy)  # the files agree with each other
    out = tmp_path / "points.jsonl"
    code = main(["--input", str(ravdess_clips[0]), "--fast", "--model", str(bundle_copy), "--no-store",
                 "--no-dashboard", "--jsonl", str(out)])
    assert code == EXIT_SETUP
    assert "backbone gives 88" in capsys.readouterr().err
    assert not out.exists()


def test_a_model_that_fails_its_warm_up_stops_the_run(tmp_path, ravdess_clips, monkeypatch, capsys):
    from monitor.model.emotion import EmotionModel

    def broken(self, waves, baseline=None):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(EmotionModel, "embed_waveforms", broken)
    out = tmp_path / "points.jsonl"
    code = main(["--input", str(ravdess_clips[0]), "--fast", "--model", "egemaps", "--no-store", "--no-dashboard",
                 "--jsonl", str(out)])
    assert code == EXIT_SETUP
    err = capsys.readouterr().err
    assert "failed its warm-up" in err and "shapes cannot be multiplied" in err
    assert not out.exists() or "point" not in out.read_text()


def test_the_shipped_bundles_pass():
    for name in SHIPPED_BUNDLES:
        assert load_bundle(name).labels
