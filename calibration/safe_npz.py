"""Reading ``.npz`` files from someone else: no pickles, bounded size, finite numbers.

``np.load(allow_pickle=False)`` already refuses object arrays, but an archive is a
zip: a few kilobytes on disk may inflate to gigabytes (a "zip bomb"). The sizes
the archive declares are checked before anything is inflated, and each member
is read through a stream that stops at the declared size, so a forged header
cannot inflate past it either.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np

#: What any array file of a model bundle may inflate to, in total. The largest shipped one is a few MB.
MAX_NPZ_BYTES = 512 * 1024 * 1024
MAX_NPZ_MEMBERS = 256


class UnsafeArrayFile(ValueError):
    """An ``.npz`` file that is not a plain, bounded archive of numeric arrays; the message says why."""


def read_npz(path: str | Path, max_bytes: int | None = None, require_finite: bool = True) -> dict[str, np.ndarray]:
    """Every array of ``path``, checked: at most ``max_bytes`` (default MAX_NPZ_BYTES) inflated, numeric, finite."""
    max_bytes = MAX_NPZ_BYTES if max_bytes is None else max_bytes
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise UnsafeArrayFile(f"{path} holds {len(members)} arrays (at most {MAX_NPZ_MEMBERS})")
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise UnsafeArrayFile(f"{path} would inflate to {declared / 1e6:.0f} MB "
                                      f"(at most {max_bytes / 1e6:.0f} MB)")
            arrays: dict[str, np.ndarray] = {}
            for member in members:
                name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                with archive.open(member) as stream:
                    array = np.lib.format.read_array(_Bounded(stream, member.file_size), allow_pickle=False)
                if array.dtype.kind not in "biuf":
                    raise UnsafeArrayFile(f"{path}: array {name!r} has dtype {array.dtype}, not a number")
                if require_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise UnsafeArrayFile(f"{path}: array {name!r} holds NaN or infinite values")
                arrays[name] = array
            return arrays
    except UnsafeArrayFile:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UnsafeArrayFile(f"cannot read {path}: {exc}") from exc


class _Bounded:
    """A read-only stream that refuses to deliver more than ``limit`` bytes (a member lying about its size)."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._left + 1
        data = self._stream.read(min(size, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise UnsafeArrayFile("an array member inflates past the size its archive declares")
        return data

    def readinto(self, buffer: "bytearray | memoryview") -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)
