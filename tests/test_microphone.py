"""The microphone source, against a stand-in for sounddevice (no sound card on test machines)."""

from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest

from monitor.audio.io import AudioInputError
from monitor.audio.sources import MicrophoneSource, import_sounddevice, list_devices
from tests.synth import voiced


class FakeSoundDevice(types.ModuleType):
    """Just enough of sounddevice: devices, a settings check, and a callback stream fed from a thread."""

    class PortAudioError(Exception):
        pass

    def __init__(self, audio: np.ndarray, rate: int = 16000, accepts_16k: bool = True, pace: float = 0.0,
                 devices: list[dict] | None = None):
        super().__init__("sounddevice")
        self.audio, self.rate, self.accepts_16k, self.pace = audio, rate, accepts_16k, pace
        self.devices = devices if devices is not None else [
            {"name": "Fake Mic", "max_input_channels": 1, "default_samplerate": float(rate)}]
        fake = self

        class InputStream:
            def __init__(self, device, channels, samplerate, blocksize, dtype, callback):
                self.callback, self.blocksize, self.samplerate = callback, blocksize, samplerate
                self.active = False
                self._thread = threading.Thread(target=self._feed, daemon=True)

            def _feed(self):
                for i in range(0, len(fake.audio) - self.blocksize + 1, self.blocksize):
                    block = fake.audio[i : i + self.blocksize, None].astype(np.float32)
                    self.callback(block, self.blocksize, None, None)
                    if fake.pace:
                        time.sleep(fake.pace)
                self.active = False  # the device went away

            def start(self):
                self.active = True
                self._thread.start()

            def stop(self):
                pass

            def close(self):
                pass

        self.InputStream = InputStream

    def query_devices(self, device=None, kind=None):
        if device is None and kind is None:
            return "\n".join(d["name"] for d in self.devices)
        if not self.devices:
            raise self.PortAudioError("Error querying device -1")
        if device is None:
            return self.devices[0]
        if isinstance(device, int) and 0 <= device < len(self.devices):
            return self.devices[device]
        raise ValueError(f"No input device matching {device!r}")

    def check_input_settings(self, device=None, channels=None, dtype=None, samplerate=None):
        if samplerate != self.rate and not self.accepts_16k:
            raise self.PortAudioError("Invalid sample rate")


def _install(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "sounddevice", fake)


def test_frames_carry_sample_counted_time(monkeypatch):
    _install(monkeypatch, FakeSoundDevice(voiced(1.5)))
    source = MicrophoneSource(frame_ms=30, stall_timeout=0.5)
    frames = []
    with pytest.raises(AudioInputError, match="stopped delivering audio"):
        for frame in source.frames():
            frames.append(frame)
    assert len(frames) == 50
    np.testing.assert_allclose([f.t_start for f in frames], np.arange(50) * 0.03, atol=1e-9)
    assert source.dropped_frames == 0


def test_device_without_16k_is_resampled(monkeypatch):
    audio = voiced(1.2, sr=44100)
    _install(monkeypatch, FakeSoundDevice(audio, rate=44100, accepts_16k=False))
    source = MicrophoneSource(frame_ms=20, stall_timeout=0.5)
    assert source.rate == 44100
    frames = []
    with pytest.raises(AudioInputError):
        for frame in source.frames():
            frames.append(frame)
    assert all(len(f.samples) == 320 for f in frames)
    assert frames[-1].t_end == pytest.approx(1.2, abs=0.05)


def test_slow_consumer_drops_and_counts_frames_with_true_times(monkeypatch):
    _install(monkeypatch, FakeSoundDevice(voiced(3.0), pace=0.0005))
    source = MicrophoneSource(frame_ms=30, queue_seconds=0.12, stall_timeout=0.5)  # 4 blocks of room
    frames = []
    with pytest.raises(AudioInputError):
        for frame in source.frames():
            frames.append(frame)
            time.sleep(0.01)  # far slower than the callback
    assert source.dropped_frames > 0
    assert len(frames) + source.dropped_frames == 100
    starts = np.array([f.t_start for f in frames])
    assert np.all(np.diff(starts) > 0)
    assert starts.max() > 1.0  # later frames kept their true (later) times


def test_missing_microphone_says_what_to_do(monkeypatch):
    _install(monkeypatch, FakeSoundDevice(voiced(0.1), devices=[]))
    with pytest.raises(AudioInputError, match="--list-devices"):
        MicrophoneSource()


def test_unknown_device(monkeypatch):
    _install(monkeypatch, FakeSoundDevice(voiced(0.1)))
    with pytest.raises(AudioInputError, match="no input device 7"):
        MicrophoneSource(device=7)


def test_output_only_device(monkeypatch):
    _install(monkeypatch, FakeSoundDevice(voiced(0.1), devices=[{"name": "Speakers", "max_input_channels": 0}]))
    with pytest.raises(AudioInputError, match="no input channels"):
        MicrophoneSource()


def test_missing_portaudio_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(AudioInputError, match="libportaudio2"):
        import_sounddevice()
    with pytest.raises(AudioInputError, match="--input FILE"):
        list_devices()
