"""eGeMAPSv02 functionals for the RAVDESS speech subset, cached under .cache/.

Extraction takes minutes on two cores and never changes, so it runs once and
the evaluation script reads the cache. Labels are read from the file names by
``calibration.data.parse_ravdess_name``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ravdess"
DEFAULT_CACHE = REPO / ".cache" / "ravdess_egemaps_v02.npz"


def list_files(data_dir: Path) -> list[Path]:
    files = sorted(data_dir.glob("Actor_*/*.wav"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS wav files under {data_dir}")
    return files


def extract(data_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """Features for every file, from the cache when it matches the file list."""
    files = list_files(data_dir)
    rel = np.asarray([str(f.relative_to(data_dir)) for f in files], dtype=str)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if z["files"].shape == rel.shape and np.all(z["files"] == rel):
                return {k: z[k] for k in z.files}
    import opensmile
    import soundfile as sf
    from tqdm import tqdm

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.Functionals,
    )
    rows = []
    for f in tqdm(files, desc="eGeMAPSv02", unit="file"):
        x, sr = sf.read(f, dtype="float32", always_2d=False)
        if x.ndim > 1:
            x = x.mean(axis=1)
        if sr != 16000:
            raise ValueError(f"{f.name}: expected 16 kHz, got {sr}")
        rows.append(smile.process_signal(x, sr).to_numpy(dtype=np.float32)[0])
    out = {
        "features": np.stack(rows).astype(np.float32),
        "feature_names": np.asarray(list(smile.feature_names), dtype=str),
        "files": rel,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="RAVDESS folder with Actor_XX/ subfolders "
                         "(default: ../shared/data/ravdess from the repo root)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache file (.npz)")
    args = ap.parse_args(argv)
    out = extract(args.data, args.cache)
    print(f"{out['features'].shape[0]} files x {out['features'].shape[1]} features -> {args.cache}")


if __name__ == "__main__":
    main()
