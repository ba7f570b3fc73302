"""Train on what the monitor sees: every clip cut into speech segments by the live VAD.

The live pipeline never embeds a whole recording: its webrtcvad segmenter cuts
speech into segments of 0.5-6 s (with pre-roll and hangover), and the model
sees each one. :func:`segment_manifest` turns a clip manifest into a segment
manifest with exactly those cuts (``monitor.audio.segmenter.segment_file``, the
default ``VadConfig``), so training, the held-out protocols and the runtime
agree on the unit. Each segment keeps its clip's label, speaker and corpus,
and its clip's key (``Item.clip``), so clip-level scores can average the
segments back (duration-weighted, as the issue's evaluation does). A clip in
which the VAD finds no speech keeps one segment spanning the whole clip (so no
labelled clip is lost; the count is logged).

The cuts are cached (JSON, keyed by file, size and VAD settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from monitor.audio.segmenter import VadConfig, segment_file
from training.corpora import Item, Manifest

log = logging.getLogger(__name__)

#: Bump when the segmentation changes in a way the cache key does not see.
SEGMENTS_VERSION = 1


def _cache_key(item: Item, vad: VadConfig) -> str:
    try:
        size = os.path.getsize(item.path)
    except OSError:
        size = -1
    text = f"{item.key}|{size}|{json.dumps(asdict(vad), sort_keys=True)}|v{SEGMENTS_VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _whole_clip_span(item: Item) -> list[tuple[float, float]]:
    import soundfile as sf

    return [(0.0, float(sf.info(item.path).duration))]


def clip_spans(item: Item, vad: VadConfig) -> tuple[list[tuple[float, float]], bool]:
    """(segment spans in seconds, whether the VAD found speech) of one clip."""
    spans = [(round(s.t_start, 4), round(s.t_end, 4)) for s in segment_file(item.path, vad)]
    if spans:
        return spans, True
    return _whole_clip_span(item), False


def segment_manifest(manifest: Manifest, vad: VadConfig | None = None, cache: str | Path | None = None,
                     progress: bool = True) -> Manifest:
    """One item per live-VAD speech segment of every clip (see the module docstring)."""
    from tqdm.auto import tqdm

    vad = vad or VadConfig()
    cache_file = Path(cache) / "segments.json" if cache is not None else None
    known: dict[str, dict[str, Any]] = {}
    if cache_file is not None and cache_file.is_file():
        known = json.loads(cache_file.read_text())
    items: list[Item] = []
    fallback = 0
    changed = False
    for item in tqdm(list(manifest), desc="VAD segments", unit="clip", disable=not progress):
        key = _cache_key(item, vad)
        if key not in known:
            spans, found = clip_spans(item, vad)
            known[key] = {"spans": [[a, b] for a, b in spans], "speech": found}
            changed = True
        entry = known[key]
        fallback += not entry["speech"]
        stem = item.utterance or Path(item.path).stem
        for i, (start, end) in enumerate(entry["spans"]):
            items.append(replace(item, utterance=f"{stem}#{i}", start=float(start), end=float(end), clip=item.key))
    if cache_file is not None and changed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache_file)
    if fallback:
        log.warning("%d of %d clips had no speech the VAD accepts; each is kept as one whole-clip segment",
                    fallback, len(manifest))
    log.info("%d clips -> %d speech segments", len(manifest), len(items))
    return Manifest(items, list(manifest.skipped))
