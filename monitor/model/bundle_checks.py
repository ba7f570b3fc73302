"""A bundle from someone else is checked whole when it is read, before it runs.

Why here and not where each field is used: a malformed field found late is a
traceback in the middle of a session, or worse a model that fails on every
segment and yields an empty session with exit 0. Every check names the file
and the field, and raises ``BundleError`` (the CLI's exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

MAX_LABELS = 64
MAX_DIM = 1 << 16
MAX_HIDDEN_LAYERS = 8


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, malformed or unreadable; the message names the path."""


def check_meta(meta: Mapping[str, Any], meta_path: Path) -> None:
    """bundle.json's fields have the types and ranges a model needs."""
    def bad(field: str, why: str) -> BundleError:
        return BundleError(f"{meta_path}: field {field!r} {why}")

    for field in ("backbone", "labels", "anchors", "head"):
        if field not in meta:
            raise bad(field, "is missing")
    if not isinstance(meta["backbone"], dict) or not isinstance(meta["backbone"].get("kind"), str):
        raise bad("backbone", "must be an object with a string 'kind'")
    labels = meta["labels"]
    if (not isinstance(labels, list) or not 1 < len(labels) <= MAX_LABELS
            or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels)):
        raise bad("labels", f"must be a list of 2 to {MAX_LABELS} distinct, non-empty names")
    anchors = meta["anchors"]
    if not isinstance(anchors, dict) or any(label not in anchors for label in labels):
        raise bad("anchors", "must give an anchor for every label")
    for label, value in anchors.items():
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(_is_number(v) and -1.0 <= float(v) <= 1.0 for v in value)):
            raise bad("anchors", f"{label!r} must be a (valence, arousal) pair within [-1, 1]")
    _check_head(meta["head"], len(labels), bad)
    normalization = meta.get("normalization", {"mode": "none"})
    if not isinstance(normalization, dict) or normalization.get("mode", "none") not in {"none", "population",
                                                                                        "enrolment"}:
        raise bad("normalization", "must be an object whose mode is none, population or enrolment")
    for field in ("provenance", "metrics"):
        if field in meta and not isinstance(meta[field], dict):
            raise bad(field, "must be an object")


def _check_head(head: Any, n_labels: int, bad: Any) -> None:
    if not isinstance(head, dict):
        raise bad("head", "must be an object")
    for key in ("input_dim", "embedding_dim", "n_classes"):
        if not _is_int(head.get(key)) or not 0 < head[key] <= MAX_DIM:
            raise bad(f"head.{key}", f"must be an integer in 1..{MAX_DIM}")
    if head["n_classes"] != n_labels:
        raise bad("head.n_classes", f"is {head['n_classes']}, but there are {n_labels} labels")
    dropout = head.get("dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= float(dropout) < 1.0:
        raise bad("head.dropout", "must be a number in [0, 1)")
    hidden = head.get("hidden_dims", [])
    if (not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS
            or not all(_is_int(h) and 0 < h <= MAX_DIM for h in hidden)):
        raise bad("head.hidden_dims", f"must be a list of at most {MAX_HIDDEN_LAYERS} positive widths")
    if head.get("activation", "gelu") not in {"gelu", "relu"}:
        raise bad("head.activation", "must be gelu or relu")


def check_inside(folder: Path, source: str) -> Path:
    """The folder a ``bundle:NAME`` backbone source names, refused unless it lies inside the bundle."""
    root = folder.resolve()
    target = (root / source[len("bundle:"):]).resolve()
    if target == root or root not in target.parents:
        raise BundleError(f"{folder / 'bundle.json'}: backbone source {source!r} points outside the bundle")
    return target


def check_head_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Head weights are finite floating-point tensors (shapes are checked against the head when it is built)."""
    for name, tensor in state.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"{path}: tensor {name!r} is not finite floating point")


def check_normalization(arrays: Mapping[str, np.ndarray], input_dim: int, path: Path) -> None:
    """Normalisation arrays match the head's input and never divide by zero."""
    for name, array in arrays.items():
        if array.shape != (input_dim,):
            raise BundleError(f"{path}: array {name!r} has shape {array.shape}, the head takes {input_dim} features")
    if "scale" in arrays and not (arrays["scale"] > 0).all():
        raise BundleError(f"{path}: array 'scale' must be positive")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
