"""The researcher's API (``from monitor import MoodModel``): the live monitor's numbers, as tables.

The central check: a recording scored by ``process_file``, ``process_signal``
and ``process_folder`` gives exactly the points a real ``MonitorPipeline``
replay of it writes to its JSONL, segment for segment.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from monitor.audio.io import AudioInputError, read_audio
from monitor.model.audio_format import SAMPLE_RATE

CLIPS = ["03-01-01-01-01-01-01.wav", "03-01-05-02-01-01-01.wav", "03-01-04-01-02-01-01.wav"]


@pytest.fixture(scope="module")
def mood():
    from monitor import MoodModel

    return MoodModel.from_pretrained("egemaps", device="cpu", progress=False)


@pytest.fixture(scope="module")
def clips(ravdess_dir):
    return [ravdess_dir / "Actor_01" / name for name in CLIPS]


@pytest.fixture(scope="module")
def session_wav(clips, tmp_path_factory):
    """Three real clips, 1.5 s of silence apart, as one recording: several segments, batched by the live worker."""
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([x for c in clips for x in (read_audio(c), gap)])
    path = tmp_path_factory.mktemp("session") / "session.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def live_records(mood, session_wav, tmp_path_factory):
    """The session replayed through the real live pipeline, written by its JSONL output."""
    from monitor.audio.sources import FileSource
    from monitor.live.outputs import JsonlSink
    from monitor.live.pipeline import MonitorConfig, MonitorPipeline
    from monitor.live.projection import Projector
    from monitor.live.worker import WorkerConfig

    out = tmp_path_factory.mktemp("live") / "points.jsonl"
    pipeline = MonitorPipeline(FileSource(session_wav, realtime=False), mood.model,
                               Projector(mood.bundle.reducer, mood.bundle.labels), sinks=[JsonlSink(out)],
                               config=MonitorConfig(worker=WorkerConfig(device="cpu", max_batch=8)))
    summary = pipeline.run()
    assert summary.failed_segments == 0 and summary.error is None
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_same_as_live(table: pd.DataFrame, records: list[dict], labels, duration: float) -> None:
    header, points = records[0], [r for r in records if r["type"] == "point"]
    assert header["type"] == "session" and header["labels"] == list(labels)
    assert len(points) >= 3 and len(table) == len(points)
    for (_, start, end), row, point in zip(table.index, table.itertuples(index=False), points, strict=True):
        assert start.total_seconds() == pytest.approx(point["t_start"], abs=1e-9)
        assert end.total_seconds() == pytest.approx(min(point["t_end"], duration), abs=1e-6)
        assert row.valence == point["valence"] and row.arousal == point["arousal"]
        assert row.confidence == point["confidence"]
        assert list(point["probabilities"]) == list(labels)  # every class, in label order
        assert [getattr(row, f"prob_{c}") for c in labels] == list(point["probabilities"].values())


def test_process_file_signal_and_folder_give_the_live_pipelines_points(mood, session_wav, live_records, tmp_path):
    duration = sf.info(str(session_wav)).frames / SAMPLE_RATE
    by_file = mood.process_file(session_wav)
    assert_same_as_live(by_file, live_records, mood.labels, duration)

    samples, rate = sf.read(str(session_wav), dtype="float32")
    by_signal = mood.process_signal(samples, rate, file=str(session_wav))
    pd.testing.assert_frame_equal(by_signal, by_file)

    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(session_wav, folder / "session.wav")
    by_folder = mood.process_folder(folder)
    assert list(by_folder.index.get_level_values("file")) == [str(folder / "session.wav")] * len(by_file)
    np.testing.assert_array_equal(by_folder.to_numpy(), by_file.to_numpy())
    assert (by_folder.index.droplevel("file") == by_file.index.droplevel("file")).all()


def test_the_table_layout(mood, clips):
    import audformat

    table = mood.process_files(clips[:2])
    assert audformat.index_type(table.index) == "segmented"
    assert list(table.index.names) == ["file", "start", "end"]
    assert str(table.index.dtypes["start"]) == str(table.index.dtypes["end"]) == "timedelta64[ns]"
    assert list(table.columns) == ["valence", "arousal", "confidence", *(f"prob_{c}" for c in mood.labels)]
    assert mood.columns == list(table.columns) and len(mood.labels) == 9
    assert (table.dtypes == "float64").all()
    assert list(dict.fromkeys(table.index.get_level_values("file"))) == [str(c) for c in clips[:2]]
    probs = table[[f"prob_{c}" for c in mood.labels]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(table["confidence"].to_numpy(), probs.max(axis=1))
    assert table[["valence", "arousal"]].abs().le(1.0).all().all()


def test_batches_do_not_change_the_numbers(mood, clips):
    """The eGeMAPS model is batch invariant: segments embedded together or one by one give identical numbers."""
    from monitor.audio.segmenter import segment_signal

    waves = [s.audio for c in clips for s in segment_signal(read_audio(c))]
    together = mood.model.embed_waveforms(waves)
    alone = [mood.model.embed_waveforms([w]) for w in waves]
    np.testing.assert_array_equal(together[0], np.concatenate([e for e, _ in alone]))
    np.testing.assert_array_equal(together[1], np.concatenate([p for _, p in alone]))

    batched = mood.process_files(clips)
    mood.batch_size = 1
    try:
        one_by_one = mood.process_files(clips)
    finally:
        mood.batch_size = 16
    pd.testing.assert_frame_equal(batched, one_by_one)


def test_whole_files_stretches_and_indexes(mood, clips, ravdess_dir):
    import audformat

    whole = mood.process_files(clips[:2], segment=False)
    assert len(whole) == 2
    for (file, start, end), clip in zip(whole.index, clips[:2], strict=True):
        assert file == str(clip) and start == pd.Timedelta(0)
        assert end.total_seconds() == pytest.approx(sf.info(str(clip)).frames / sf.info(str(clip)).samplerate)

    # a stretch of a file scores like the same stretch cut out as a signal; times are the file's
    stretch = mood.process_file(clips[1], start=0.5, end=pd.Timedelta(seconds=2.5), segment=False)
    audio = read_audio(clips[1])
    cut = mood.process_signal(audio[8000:40000], SAMPLE_RATE, segment=False)
    np.testing.assert_array_equal(stretch.to_numpy(), cut.to_numpy())
    assert stretch.index[0][1:] == (pd.Timedelta(seconds=0.5), pd.Timedelta(seconds=2.5))

    # audformat indexes, relative to a root: filewise, and segmented with an open end
    names = [str(c.relative_to(ravdess_dir)) for c in clips[:2]]
    filewise = mood.process_index(audformat.filewise_index(names), root=ravdess_dir)
    assert list(filewise.index.get_level_values("file")) == names
    np.testing.assert_array_equal(filewise.to_numpy(), whole.to_numpy())
    index = audformat.segmented_index(names[::-1], [0.5, 0.0], [2.5, None])
    segmented = mood.process_index(index, root=ravdess_dir)
    assert segmented.index[1][2] == whole.index[0][2]  # an open end runs to the end of the file
    np.testing.assert_array_equal(segmented.iloc[0].to_numpy(), stretch.iloc[0].to_numpy())
    np.testing.assert_array_equal(segmented.iloc[1].to_numpy(), whole.iloc[0].to_numpy())
    vad = mood.process_index(audformat.filewise_index(names), root=ravdess_dir, segment=True)
    np.testing.assert_array_equal(vad.to_numpy(), mood.process_files(clips[:2]).to_numpy())


def test_signals_in_any_layout_rate_and_sample_type(mood, clips, tmp_path):
    audio = read_audio(clips[1])
    for name, wide in (("stereo", np.stack([audio, audio * 0.5], axis=1)),
                       ("inverted", np.stack([audio * 0.9, -audio * 0.8], axis=1))):  # a miswired channel
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), wide, SAMPLE_RATE, subtype="PCM_16")
        by_file = mood.process_file(path)
        assert by_file["valence"].notna().all()
        pcm, rate = sf.read(str(path), dtype="int16")
        for signal in (pcm, pcm.T, sf.read(str(path), dtype="float32")[0], sf.read(str(path))[0]):
            np.testing.assert_array_equal(mood.process_signal(signal, rate).to_numpy(), by_file.to_numpy())

    from monitor.api import to_model_audio

    upsampled = tmp_path / "44k.flac"
    import soxr

    sf.write(str(upsampled), soxr.resample(audio, SAMPLE_RATE, 44100), 44100)
    data, rate = sf.read(str(upsampled), dtype="float32")
    np.testing.assert_array_equal(to_model_audio(data, rate), read_audio(upsampled))  # the reader's own samples
    np.testing.assert_array_equal(mood.process_signal(data, rate).to_numpy(), mood.process_file(upsampled).to_numpy())


def test_bad_files_silence_and_errors(mood, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    quiet = tmp_path / "quiet.wav"
    sf.write(str(quiet), np.zeros(2 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="bad.wav"):
        mood.process_files([clips[0], bad])
    table = mood.process_files([clips[0], bad, quiet], errors="report")
    assert list(table.columns)[-1] == "error"
    files = table.index.get_level_values("file")
    ok, failed, silent = table[files == str(clips[0])], table[files == str(bad)], table[files == str(quiet)]
    assert len(ok) >= 1 and ok["error"].isna().all() and ok["valence"].notna().all()
    assert len(failed) == 1 and "cannot read" in failed["error"].iloc[0] and failed["valence"].isna().all()
    assert pd.isna(failed.index[0][2])  # unknown end
    # no speech: one row spanning the file, without values, so every input shows in the table
    assert len(silent) == 1 and silent["valence"].isna().all() and silent["error"].isna().all()
    assert silent.index[0][1:] == (pd.Timedelta(0), pd.Timedelta(seconds=2))
    with pytest.raises(ValueError, match="errors"):
        mood.process_files([clips[0]], errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no audio files"):
        mood.process_folder(tmp_path, pattern="*.flac")


def test_enrolment_from_a_recording_a_file_or_the_store(mood, ravdess_dir, tmp_path):
    from calibration.speaker import SpeakerBaseline
    from monitor import MoodModel
    from monitor.history.store import Store

    calm = sorted((ravdess_dir / "Actor_01").glob("03-01-0[12]-*.wav"))[:6]  # neutral and calm speech, ~12 s
    intake = tmp_path / "intake.wav"
    sf.write(str(intake), np.concatenate([read_audio(c) for c in calm]), SAMPLE_RATE)
    enrolled = MoodModel.from_pretrained("egemaps", device="cpu", baseline=intake, progress=False)
    assert enrolled.baseline is not None and enrolled.baseline.model_id == mood.model_id
    probe = ravdess_dir / "Actor_01" / CLIPS[1]
    plain, calibrated = mood.process_file(probe), enrolled.process_file(probe)
    assert not np.array_equal(plain.to_numpy(), calibrated.to_numpy())  # the baseline moves the point

    enrolled.baseline.save(tmp_path / "baseline.json")
    from_json = MoodModel.from_pretrained("egemaps", device="cpu", baseline=tmp_path / "baseline.json")
    pd.testing.assert_frame_equal(from_json.process_file(probe), calibrated)

    store = Store.open(tmp_path / "store.sqlite")
    store.set_baseline("P-1", enrolled.baseline.to_json(), mood.model_id)
    store.close()
    from_store = MoodModel.from_pretrained("egemaps", device="cpu", patient="P-1", db=tmp_path / "store.sqlite")
    pd.testing.assert_frame_equal(from_store.process_file(probe), calibrated)
    with pytest.raises(LookupError, match="P-2"):
        MoodModel.from_pretrained("egemaps", device="cpu", patient="P-2", db=tmp_path / "store.sqlite")
    other = SpeakerBaseline(mean=np.zeros(88), n_segments=1, seconds=30.0, model_id="other@1+0")
    with pytest.raises(ValueError, match="enrolled with model other"):
        MoodModel.from_pretrained("egemaps", device="cpu", baseline=other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MoodModel.from_pretrained("egemaps", device="cpu").baseline is None


def fake_hub_cache(cache, repo_id: str, revision: str = "main"):
    """The Hugging Face cache layout: models--ORG--NAME/refs/<revision> -> commit, snapshots/<commit>/files
    (here a copy of the shipped bundle, about 1 MB)."""
    from monitor.model.bundle import SHIPPED_BUNDLES

    commit = "4f1c2b3a" * 5
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(SHIPPED_BUNDLES["egemaps"], repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    return repo / "snapshots" / commit


def test_a_hub_repo_id_loads_from_the_local_cache_offline(tmp_path, monkeypatch):
    from monitor import MoodModel
    from monitor.model.bundle import BundleError, load_bundle

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = fake_hub_cache(tmp_path / "hf", "mood-lab/mood-egemaps")
    model = MoodModel.from_pretrained("mood-lab/mood-egemaps", cache_dir=tmp_path / "hf", device="cpu")
    assert model.bundle.path == snapshot and model.model_id == load_bundle(snapshot).model_id
    assert model.model_id == load_bundle("egemaps").model_id
    rng = np.random.default_rng(0)
    signal = (0.1 * np.sin(np.arange(3 * SAMPLE_RATE) * 2 * np.pi * 180 / SAMPLE_RATE)
              * (1 + 0.3 * rng.standard_normal(3 * SAMPLE_RATE))).astype(np.float32)
    table = model.process_signal(signal, SAMPLE_RATE, segment=False)
    assert list(table.columns)[3:] == [f"prob_{c}" for c in load_bundle("egemaps").labels]

    model.save_pretrained(tmp_path / "copy")
    again = MoodModel.from_pretrained(tmp_path / "copy", device="cpu")
    assert again.model_id == model.model_id
    pd.testing.assert_frame_equal(again.process_signal(signal, SAMPLE_RATE, segment=False), table)

    with pytest.raises(BundleError, match="HF_HUB_OFFLINE"):
        MoodModel.from_pretrained("mood-lab/not-cached", cache_dir=tmp_path / "hf")


def test_the_package_exports_mood_model_lazily():
    import subprocess
    import sys

    code = ("import sys, monitor; assert 'monitor.api' not in sys.modules and 'pandas' not in sys.modules; "
            "from monitor import MoodModel; import monitor.api; assert MoodModel is monitor.api.MoodModel; "
            "assert 'MoodModel' in dir(monitor) and monitor.__all__ == ['MoodModel']")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    import monitor

    with pytest.raises(AttributeError, match="Nothing"):
        monitor.Nothing  # noqa: B018


@pytest.mark.slow
def test_worker_processes_give_the_same_table(mood, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF")
    files = [*clips, bad, clips[0]]
    here = mood.process_files(files, errors="report")
    mood.num_workers = 2
    try:
        there = mood.process_files(files, errors="report")
        with pytest.raises(AudioInputError):
            mood.process_files(files)
    finally:
        mood.num_workers = 1
    pd.testing.assert_frame_equal(here.drop(columns="error"), there.drop(columns="error"))
    assert (here["error"].isna() == there["error"].isna()).all()  # the messages may name another descriptor
    assert there["error"].dropna().str.contains("bad.wav").all()
