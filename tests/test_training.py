"""Stage I training: the command line and its one settings definition, sampling, augmentation, the
egemaps path on real clips, a tiny-WavLM run end to end into a bundle the monitor loads, resuming
from a checkpoint, device selection and the AMP code path (on the CPU: no GPU is available to this
project)."""

from __future__ import annotations

import csv
import json
import shlex
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import DATA_ROOT, corpus_dir
from training.augment import Augmentation
from training.sampling import BalancedSampler, sample_weights
from training.train import TrainConfig, Trainer, fit_temperature, predict_head, train_head

DATA = DATA_ROOT  # ../shared/data, or $MOOD_MONITOR_DATA (tests/conftest.py)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small models on a shared 2-core machine: extra intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need(folder: str) -> Path:
    return corpus_dir(folder)


# ----------------------------------------------------------------------------- command line and settings

#: Every setting flag away from its default (plus the reducer flags): the same flags must give the same model.
SETTING_FLAGS = ["--feature-set", "ComParE_2016", "--normalization", "population", "--augment", "noise", "gain+reverb",
                 "--balance", "class", "--epochs", "7", "--batch-size", "16", "--head-lr", "0.002", "--dropout", "0.3",
                 "--weight-decay", "0.01", "--feature-noise", "0.2", "--label-smoothing", "0.1", "--hidden-dims", "64",
                 "32", "--mixup", "0.2", "--patience", "4", "--select", "loss", "--ema", "0.9", "--estimate-baselines",
                 "--trim", "--no-temperature", "--reducer-align", "similarity", "--reducer-align-on", "train",
                 "--reducer-fast-neighbors", "30", "--reducer-n-neighbors", "15", "--reducer-target-weight", "0.2",
                 "--units", "segments", "--whisper-source", "openai/whisper-small", "--whisper-input", "padded",
                 "--layer-mix", "mean"]
SETTINGS_COMMANDS = {"build": ["--out", "x"], "evaluate": [], "experiment": [], "ablate": ["--tag", "t"]}


def _settings(argv):
    from training.__main__ import build_parser
    from training.settings import settings_from_args

    return settings_from_args(build_parser().parse_args(argv))


def test_every_subcommand_help_teaches_with_examples(capsys):
    from training.__main__ import COMMANDS, main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    for command in COMMANDS:
        assert f"  {command} " in top
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "Examples" in text and f"python -m training {command}" in text, command


def test_build_evaluate_experiment_and_ablate_resolve_the_same_settings():
    from training.settings import Settings

    for flags in ([], SETTING_FLAGS, ["--backbone", "wavlm"], ["--backbone", "wavlm", "--epochs", "3"]):
        resolved = {c: _settings([c, *flags, *extra]) for c, extra in SETTINGS_COMMANDS.items()}
        assert len({repr(s) for s in resolved.values()}) == 1, resolved
    assert _settings(["experiment"]) == Settings()  # the dataclass defaults are the egemaps defaults
    given = _settings(["build", "--out", "x", *SETTING_FLAGS])
    assert given.model == "head" and given.ensemble == 1
    assert given.augment == ("noise", "gain+reverb") and given.hidden_dims == (64, 32)
    assert not given.calibrate and given.trim and given.estimate_baselines and given.reducer_align == "similarity"
    assert given.reducer_params == {"fast_neighbors": 30, "n_neighbors": 15, "target_weight": 0.2}
    assert [f for f in asdict(given) if asdict(given)[f] == asdict(Settings())[f]] == ["model", "ensemble", "backbone"]


def test_backbone_defaults_are_resolved_in_one_place():
    wavlm = _settings(["build", "--out", "x", "--backbone", "wavlm"])
    assert (wavlm.normalization, wavlm.epochs, wavlm.batch_size, wavlm.head_lr) == ("population", 20, 8, 1e-4)
    whisper = _settings(["experiment", "--backbone", "whisper"])
    assert (whisper.backbone, whisper.units, whisper.normalization) == ("whisper", "segments", "enrolment")
    assert _settings(["experiment", "--backbone", "whisper", "--units", "clips"]).units == "clips"
    assert _settings(["build", "--out", "x", "--backbone", "wavlm", "--normalization", "none"]).normalization == "none"
    # the wavlm path has no feature noise or mixup (they act on cached features) and no 10-epoch minimum
    config = wavlm.train_config("wavlm", seed=3, encoder_lr=2e-5)
    assert (config.feature_noise, config.mixup, config.min_epochs, config.encoder_lr) == (0.0, 0.0, 1, 2e-5)
    features = _settings(["experiment", "--mixup", "0.2"]).train_config("egemaps", seed=5, device="cpu")
    assert (features.feature_noise, features.mixup, features.min_epochs, features.seed) == (0.1, 0.2, 10, 5)


@pytest.mark.parametrize("name, card_file", [("egemaps", "model_card_egemaps.md"), ("whisper", "model_card.md")])
def test_the_shipped_models_command_still_gives_its_recorded_settings_and_train_config(name, card_file):
    """The command line stored in each shipped bundle, parsed today, gives the settings and the TrainConfig it was
    trained with (so `python -m training build` with the model card's command rebuilds the same model)."""
    from monitor.model.bundle import SHIPPED_BUNDLES
    from training.settings import Settings

    if name not in SHIPPED_BUNDLES:
        pytest.skip(f"no shipped bundle named {name}")
    meta = json.loads((SHIPPED_BUNDLES[name] / "bundle.json").read_text())
    prov = meta["provenance"]
    argv = shlex.split(prov["command"])
    assert argv[:4] == ["python", "-m", "training", "build"]
    settings = _settings(argv[3:])
    # the fitted layer weights are recorded beside the settings, but are an outcome, not a setting
    outcomes = ("train", "val_speakers", "reducer", "layer_weights")
    recorded = {k: v for k, v in prov["config"].items() if k not in outcomes}
    now = settings.to_json()
    assert {k: now[k] for k in recorded} == recorded
    # settings added since the bundle was built keep, at their defaults, what it was trained with
    assert {k: v for k, v in now.items() if k not in recorded} == {
        k: v for k, v in Settings().to_json().items() if k not in recorded}
    assert json.loads(json.dumps(asdict(settings.train_config(meta["backbone"]["kind"])))) == prov["config"]["train"]
    card = (Path(__file__).resolve().parents[1] / "docs" / card_file).read_text()
    command = card.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    assert _settings(shlex.split(command)[3:]) == settings  # the card's command: the same settings


def test_build_refuses_settings_a_bundle_cannot_hold_before_reading_any_corpus(tmp_path):
    from training.__main__ import main

    for flags, message in ((["--model", "lr"], "one head"), (["--ensemble", "3"], "one head"),
                           (["--backbone", "wavlm"], "needs --source"),
                           (["--backbone", "wavlm", "--source", "x", "--normalization", "enrolment"], "population"),
                           (["--backbone", "wavlm", "--source", "x", "--trim"], "egemaps")):
        with pytest.raises(SystemExit, match=message):
            main(["build", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"), *flags])


def _ravdess_like_features(n_actors=8, dim=12, seed=0):
    """Synthetic features of RAVDESS-named clips (actors x 4 emotions x 3 takes), classes apart."""
    from training.corpora import Item, Manifest

    rng = np.random.default_rng(seed)
    labels = ("neutral", "happy", "sad", "angry")
    centers = rng.normal(0, 2.0, (len(labels), dim))
    items, rows = [], []
    for a in range(1, n_actors + 1):
        shift = rng.normal(0, 0.5, dim)
        for c, label in enumerate(labels):
            for take in range(3):
                items.append(Item(path=f"{a}_{label}_{take}.wav", label=label, speaker=f"ravdess:{a:02d}",
                                  corpus="ravdess", intensity="strong" if take else "normal", sentence="s1"))
                rows.append(centers[c] + shift + rng.normal(0, 1.0, dim))
    return np.asarray(rows), Manifest(items)


def test_experiment_command_runs_the_protocols_and_writes_its_json(tmp_path, monkeypatch, capsys):
    import training.__main__ as cli

    X, manifest = _ravdess_like_features()
    monkeypatch.setattr(cli, "_manifest", lambda args: manifest)
    monkeypatch.setattr(cli, "_features", lambda args, m, settings, progress=True: (X, m, []))
    out = tmp_path / "exp.json"
    argv = ["experiment", "--protocols", "speakers", "--model", "lr", "--points", "expected", "--no-mood",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert "[speakers]" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["argv"] == argv and result["settings"]["model"] == "lr"
    assert [r["fold"] for r in result["rows"]] == ["fold0", "fold1", "fold2", "fold3"]
    assert result["summary"]["speakers"]["uar"]["mean"] > 0.5  # classes are apart: far above chance (0.25)
    with pytest.raises(SystemExit, match="egemaps"):
        cli.main(["evaluate", "--backbone", "wavlm"])


def test_ablate_compare_prints_paired_differences(tmp_path, capsys):
    from training.__main__ import main

    def run(path, uar):
        rows = [{"protocol": "speakers", "fold": f"fold{f}", "seed": 0, "points": "red", "uar": uar + 0.01 * f}
                for f in range(4)]
        path.write_text(json.dumps({"rows": rows}))
        return f"{path}:red"

    base, other = run(tmp_path / "a.json", 0.4), run(tmp_path / "b.json", 0.5)
    assert main(["ablate", "--compare", base, other]) == 0
    line = capsys.readouterr().out
    assert "n=4" in line and "Δ +0.100" in line
    with pytest.raises(SystemExit, match="--tag"):
        main(["ablate"])


# ----------------------------------------------------------------------------- sampling, augmentation


def test_corpus_and_class_balanced_sampling():
    corpora = ["a"] * 900 + ["b"] * 100
    labels = ["x"] * 800 + ["y"] * 100 + ["x"] * 50 + ["z"] * 50
    w = sample_weights(labels, corpora, "corpus+class")
    draws = list(BalancedSampler(w, num_samples=20000, seed=1))
    pairs = Counter((corpora[i], labels[i]) for i in draws)
    for key in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")]:
        assert pairs[key] / 20000 == pytest.approx(0.25, abs=0.02)
    wc = sample_weights(labels, None, "class")
    assert wc[labels.index("z")] * 50 == pytest.approx(1 / 3)
    # the sampler's generator state is what a checkpoint stores: same state, same draws
    s = BalancedSampler(w, num_samples=50, seed=5)
    state = s.state()
    first = list(s)
    s.set_state(state)
    assert list(s) == first


def test_augmentation_is_deterministic_and_changes_audio():
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    aug = Augmentation.from_spec("noise+gain+speed+reverb", seed=3)
    a, b = aug(wave, "clip-1"), aug(wave, "clip-1")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(aug(wave, "clip-2")[:8000], a[:8000])
    assert abs(len(a) - len(wave)) < 0.12 * len(wave) and np.max(np.abs(a)) <= 1.0
    with pytest.raises(ValueError, match="unknown augmentation"):
        Augmentation.from_spec("pitchshift")


# ----------------------------------------------------------------------------- head training


def _blobs(n=240, d=12, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centers = rng.normal(0, 2.0, (c, d))
    return (centers[y] + rng.normal(0, 1.0, (n, d))).astype(np.float32), y


def test_head_learns_separable_classes_and_calibrates():
    X, y = _blobs()
    labels = ["angry", "happy", "sad"]
    cfg = TrainConfig(epochs=30, head_lr=3e-3, batch_size=32, seed=0, device="cpu", patience=30)
    head, result = train_head(X[:180], y[:180], labels, cfg, X[180:], y[180:])
    emb, probs = predict_head(head, X[180:])
    assert emb.shape == (60, 100) and probs.shape == (60, 3)
    assert (probs.argmax(1) == y[180:]).mean() > 0.9
    assert result.best_score > 0.9 and 1 <= result.best_epoch <= 30
    assert 0.05 < result.temperature < 20 and float(head.temperature) == pytest.approx(result.temperature)


def test_loss_selection_keeps_the_epoch_with_the_lowest_validation_loss_and_ema_keeps_averaged_weights():
    X, y = _blobs()
    labels = ["angry", "happy", "sad"]
    cfg = TrainConfig(epochs=12, head_lr=3e-3, batch_size=32, seed=0, device="cpu", patience=30, select="loss")
    _, result = train_head(X[:180], y[:180], labels, cfg, X[180:], y[180:])
    losses = [r["val_loss"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses)) and result.best_score == pytest.approx(-min(losses))

    plain, _ = train_head(X[:180], y[:180], labels, TrainConfig(epochs=6, head_lr=3e-3, batch_size=32, seed=0,
                                                                device="cpu", patience=30), X[180:], y[180:])
    averaged, res_ema = train_head(X[:180], y[:180], labels, TrainConfig(epochs=6, head_lr=3e-3, batch_size=32, seed=0,
                                                                         device="cpu", patience=30, ema=0.9),
                                   X[180:], y[180:])
    # same seed and batches: only the kept weights differ, and the averaged head still separates the classes
    assert not torch.allclose(plain.bottleneck.weight, averaged.bottleneck.weight)
    assert res_ema.best_score > 0.9 and (predict_head(averaged, X[180:])[1].argmax(1) == y[180:]).mean() > 0.9


def test_head_with_an_mlp_encoder_and_mixup_learns_and_round_trips_through_a_bundle(tmp_path):
    from calibration.speaker import FeatureNormalizer
    from monitor.model.bundle import load_bundle
    from monitor.model.head import EmotionHead
    from training.export import make_bundle

    X, y = _blobs()
    labels = ["angry", "happy", "sad"]
    cfg = TrainConfig(epochs=30, head_lr=3e-3, batch_size=32, seed=0, device="cpu", patience=30, dropout=0.2,
                      hidden_dims=(32,), mixup=0.2)
    head, result = train_head(X[:180], y[:180], labels, cfg, X[180:], y[180:])
    assert head.hidden_dims == (32,) and head.encoder[0].in_features == 12 and head.bottleneck.in_features == 32
    emb, probs = predict_head(head, X[180:])
    assert emb.shape == (60, 100) and (probs.argmax(1) == y[180:]).mean() > 0.9
    # the bundle carries the encoder's shape, and the runtime rebuilds exactly this head
    norm = FeatureNormalizer("none")
    bundle = make_bundle(backbone_spec={"kind": "egemaps", "feature_set": "eGeMAPSv02", "feature_dim": 12},
                         labels=labels, head=head, normalizer=norm, name="mlp")
    assert bundle.head_config["hidden_dims"] == [32] and bundle.head_config["activation"] == "gelu"
    bundle.save(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["head"]["hidden_dims"] == [32]
    again = EmotionHead(**load_bundle(tmp_path / "b").head_config)
    again.load_state_dict({k[len("head."):]: v for k, v in bundle.head_state.items()}, strict=True)
    again.eval()
    with torch.no_grad():
        e2, logits = again(torch.as_tensor(X[180:]))
    np.testing.assert_allclose(e2.numpy(), emb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.probabilities(logits).numpy(), probs, rtol=1e-5, atol=1e-6)


def test_head_without_hidden_dims_is_the_linear_head_of_older_bundles():
    from monitor.model.head import EmotionHead

    old_config = {"input_dim": 12, "n_classes": 3, "embedding_dim": 100, "dropout": 0.2}  # no hidden_dims field
    head = EmotionHead(**old_config)
    assert head.hidden_dims == () and not hasattr(head, "encoder")
    assert sorted(head.state_dict()) == ["bottleneck.bias", "bottleneck.weight", "classifier.bias",
                                         "classifier.weight", "temperature"]
    head.eval()
    x = torch.randn(4, 12)
    emb, logits = head(x)
    torch.testing.assert_close(emb, head.bottleneck(x))  # the embedding is a linear map of the features
    torch.testing.assert_close(logits, head.classifier(emb))
    with pytest.raises(ValueError, match="activation"):
        EmotionHead(12, 3, hidden_dims=(8,), activation="swish")


def test_temperature_scaling_softens_overconfident_logits():
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (300,))
    logits = torch.randn(300, 3)
    logits[torch.arange(300), targets] += 1.0
    t = fit_temperature(logits * 8.0, targets)  # right 60% of the time, yet sure
    assert t > 3.0


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, monkeypatch):
    X, y = _blobs(seed=1)
    labels = ["angry", "happy", "sad"]
    cfg = TrainConfig(epochs=6, head_lr=1e-3, batch_size=16, seed=7, device="cpu", patience=100, dropout=0.2,
                      feature_noise=0.1, calibrate_temperature=False)
    full, _ = train_head(X[:200], y[:200], labels, cfg, X[200:], y[200:], out_dir=tmp_path / "full")

    saves = {"n": 0}
    original = Trainer.save_checkpoint

    def crash_after_three(self):
        original(self)
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_head(X[:200], y[:200], labels, cfg, X[200:], y[200:], out_dir=tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3
    resumed, result = train_head(X[:200], y[:200], labels, cfg, X[200:], y[200:], out_dir=tmp_path / "resumed",
                                 resume=True)
    assert result.resumed_from == 3 and len(result.history) == 6
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_loss", "val_uar", "lr_head"} <= set(log[0])


def test_resuming_a_run_that_stopped_early_trains_no_more(tmp_path):
    X, y = _blobs(seed=1)
    labels = ["angry", "happy", "sad"]
    cfg = TrainConfig(epochs=40, head_lr=3e-3, batch_size=16, seed=0, device="cpu", patience=2, min_epochs=1,
                      calibrate_temperature=False)
    first, done = train_head(X[:200], y[:200], labels, cfg, X[200:], y[200:], out_dir=tmp_path)
    assert len(done.history) < 40  # it stopped early
    again, result = train_head(X[:200], y[:200], labels, cfg, X[200:], y[200:], out_dir=tmp_path, resume=True)
    assert len(result.history) == len(done.history) and result.best_epoch == done.best_epoch
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(done.history)
    for k, v in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


def test_device_selection_and_amp_code_path_on_cpu():
    from monitor.model.emotion import autocast_dtype, choose_device

    if not torch.cuda.is_available():
        assert choose_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA"):
            choose_device("cuda")
        assert autocast_dtype(torch.device("cpu"), "auto") is None  # AMP is for CUDA; fp32 on the CPU
    X, y = _blobs(n=120, seed=2)
    for precision in ("bf16", "fp16"):  # the autocast (+ GradScaler for fp16) path, exercised on the CPU
        cfg = TrainConfig(epochs=2, head_lr=1e-3, batch_size=32, device="cpu", precision=precision)
        head, result = train_head(X[:90], y[:90], ["a", "b", "c"], cfg, X[90:], y[90:])
        assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])


# ----------------------------------------------------------------------------- egemaps on real clips


def _real_subset(n_per_speaker=16):
    from training.corpora import load_emovo

    m = load_emovo(_need("emovo"))
    keep = []
    for spk in ("emovo:f1", "emovo:m1", "emovo:f2"):
        idx = [i for i, it in enumerate(m) if it.speaker == spk and it.label in ("angry", "sad", "neutral", "happy")]
        keep += idx[:: max(1, len(idx) // n_per_speaker)][:n_per_speaker]
    return m[np.asarray(keep)]


@pytest.mark.slow
def test_egemaps_build_command_on_real_clips_gives_a_bundle_the_monitor_loads(tmp_path):
    from monitor.model.bundle import load_bundle
    from training.__main__ import main
    from calibration.data import load_embeddings
    from monitor.audio.io import read_audio

    subset = _real_subset()
    rows = [{"path": it.path, "label": it.label, "speaker": it.speaker.split(":")[1],
             "split": "val" if it.speaker == "emovo:f2" else "train",
             # EMOVO has one rendition per sentence: pretend one sentence at two intensities, so pairs exist
             "sentence": "s1", "intensity": "strong" if k % 2 else "normal"} for k, it in enumerate(subset)]
    with open(tmp_path / "clips.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "bundle"
    rc = main(["build", "--corpora", f"csv={tmp_path / 'clips.csv'}", "--backbone", "egemaps",
               "--normalization", "population", "--epochs", "5", "--out", str(out), "--cache", str(tmp_path / "cache"),
               "--device", "cpu"])
    assert rc == 0
    for name in ("bundle.json", "head.safetensors", "normalization.npz", "reducer.json", "reducer.npz",
                 "embeddings.npz", "manifest.csv", "metrics.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["backbone"]["kind"] == "egemaps" and meta["normalization"]["mode"] == "population"
    assert meta["provenance"]["corpora"]["clips"]["clips"] == len(rows)
    assert rows[0]["path"] not in (out / "bundle.json").read_text()  # no clip paths in the bundle
    bundle = load_bundle(out)
    model = bundle.build_model(device="cpu")
    exported = load_embeddings(out / "embeddings.npz")
    assert exported["embeddings"].shape == (len(rows), 100)
    assert set(exported["split"]) == {"train", "val"}
    # speaker, sentence and intensity travel with the embeddings, so calibration.evaluate runs the intensity check
    assert exported["sentence"].tolist() == [r["sentence"] for r in rows]
    assert exported["intensity"].tolist() == [r["intensity"] for r in rows]
    from calibration.evaluate import evaluate_reducer

    result, _ = evaluate_reducer(bundle.reducer, exported)
    assert result["intensity"] is not None and result["intensity"]["n_pairs"] > 0
    # the runtime path on the same waveform gives the exported training embedding
    emb, probs = model.embed_waveforms([read_audio(rows[0]["path"])])
    np.testing.assert_allclose(emb[0], exported["embeddings"][0], rtol=1e-4, atol=1e-4)
    points = bundle.reducer.transform(emb)
    assert points.shape == (1, 2) and np.all(np.abs(points) <= 1.0)
    assert probs.shape == (1, len(meta["labels"])) and probs.sum() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- tiny WavLM end to end


def _tiny_wavlm(folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                         num_buckets=16, max_bucket_distance=50, do_stable_layer_norm=True,
                         mask_time_prob=0.0, mask_feature_prob=0.0)
    torch.manual_seed(0)
    WavLMModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


def _synthetic_corpus(folder: Path, n_per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for label, freq in (("angry", 300.0), ("sad", 120.0), ("happy", 220.0)):
        for k in range(n_per_class):
            n = int(rng.uniform(0.3, 0.7) * 16000)
            t = np.arange(n) / 16000
            wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.05 * k) * t) + 0.01 * rng.standard_normal(n)
            path = folder / f"{label}_{k}.wav"
            sf.write(str(path), wave.astype(np.float32), 16000)
            rows.append(f"{path.name},{label},s{k % 4},{'val' if k % 4 == 3 else 'train'}")
    (folder / "tones.csv").write_text("path,label,speaker,split\n" + "\n".join(rows) + "\n")
    return folder / "tones.csv"


@pytest.mark.slow
@pytest.mark.parametrize("finetune,precision", [("transformer", "bf16"), ("frozen", "fp32")])
def test_tiny_wavlm_end_to_end_into_a_bundle_the_monitor_loads(tmp_path, finetune, precision):
    from monitor.model.bundle import load_bundle
    from training.__main__ import main
    from monitor.audio.io import read_audio

    source = _tiny_wavlm(tmp_path / "tiny-wavlm")
    corpus = _synthetic_corpus(tmp_path)
    out = tmp_path / "wavlm-bundle"
    rc = main(["build", "--backbone", "wavlm", "--source", str(source), "--finetune", finetune,
               "--corpora", f"csv={corpus}", "--epochs", "2", "--max-steps", "4", "--batch-size", "4",
               "--device", "cpu", "--precision", precision, "--out", str(out), "--augment", "noise",
               "--reducer-fast-neighbors", "7"])
    assert rc == 0
    # the reducer flags reach the wavlm bundle's reducer, as they do the egemaps one
    assert load_bundle(out).reducer.fast_neighbors == 7
    config = json.loads((out / "bundle.json").read_text())["provenance"]["config"]
    assert config["reducer_params"] == {"fast_neighbors": 7} and config["reducer"]["fast_neighbors"] == 7
    assert config["train"]["feature_noise"] == 0.0 and config["train"]["min_epochs"] == 1
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and all(np.isfinite(r["train_loss"]) for r in log)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["backbone"]["kind"] == "wavlm" and meta["backbone"]["source"] == "bundle:backbone"
    assert (out / "backbone" / "config.json").is_file()
    model = load_bundle(out).build_model(device="cpu")
    # the trained layer weights and the fine-tuned encoder came back
    state = torch.load(out / "checkpoint.pt", weights_only=True)["best_model"]
    torch.testing.assert_close(model.backbone.layer_logits.detach(), state["backbone.layer_logits"])
    enc_key = next(k for k in state
                   if k.startswith("backbone.encoder.encoder.layers.0.attention") and k.endswith("weight"))
    torch.testing.assert_close(model.backbone.state_dict()[enc_key[len("backbone."):]], state[enc_key])
    from safetensors.torch import load_file

    original = load_file(str(source / "model.safetensors"))
    orig_key = next(k for k in original if k.endswith(enc_key.split("backbone.encoder.", 1)[1]))
    changed = not torch.equal(original[orig_key], state[enc_key])
    assert changed == (finetune == "transformer")  # frozen keeps the encoder, fine-tuning moves it
    cnn_key = next(k for k in state if "feature_extractor.conv_layers.0.conv.weight" in k)
    orig_cnn = next(k for k in original if k.endswith("feature_extractor.conv_layers.0.conv.weight"))
    torch.testing.assert_close(state[cnn_key], original[orig_cnn])  # the CNN encoder is always frozen
    waves = [read_audio(p) for p in sorted(tmp_path.glob("*_0.wav"))]
    emb, probs = model.embed_waveforms(waves)
    assert emb.shape == (3, 100) and np.all(np.isfinite(emb)) and probs.shape == (3, 3)
    points = load_bundle(out).reducer.transform(emb)
    assert points.shape == (3, 2)


def test_model_card_tables_come_from_the_metrics_with_the_corpora_mean():
    from training.card import card_tables

    def stat(mean: float, std: float = 0.0, n: int = 3) -> dict[str, float]:
        return {"mean": mean, "std": std, "n": n}

    summary = {f"corpus:{c}": {"uar": stat(u), "ccc_valence": stat(v), "ccc_arousal": stat(0.5),
                               "unenrolled_uar": stat(u - 0.1), "valence_bias": stat(-0.05),
                               "neutral_v": stat(0.1), "neutral_a": stat(-0.2), "neutral_r": stat(0.22)}
               for c, u, v in (("ravdess", 0.6, 0.3), ("emovo", 0.4, 0.1), ("jl", 0.5, 0.2))}
    summary["speakers"] = {"uar": stat(0.7, 0.05), "ccc_valence": stat(0.6), "ccc_arousal": stat(0.8)}
    text = card_tables(summary)
    assert "| **mean of the corpora** | **0.50** | **0.20** | **0.50** | **0.40** |" in text
    assert "| RAVDESS 4-fold by actor | 0.70 ± 0.05 |" in text
    assert "| emovo | enrolled | -0.05 ± 0.00 | (0.10 ± 0.00, -0.20 ± 0.00) | 0.22 ± 0.00 |" in text
