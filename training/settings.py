"""The training settings, defined once: the flags, their defaults, and the ``TrainConfig`` they give.

Every command that fits a head (``build``, ``evaluate``, ``experiment``, ``ablate``) adds the same
flags with :func:`add_setting_args` and reads them back with :func:`settings_from_args`. The
defaults are the fields of :class:`Settings` (the eGeMAPS values); the few that depend on the
backbone are overridden in :data:`WAVLM_DEFAULTS`, and :func:`settings_from_args` is the one place
that applies them. :meth:`Settings.train_config` turns settings plus the run's seed and device into
the :class:`training.train.TrainConfig` of one head fit.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Sequence

from monitor.model.egemaps import EgemapsBackbone
from training.augment import AUGMENTATIONS
from training.sampling import BALANCE_MODES

if TYPE_CHECKING:
    from training.train import TrainConfig

BACKBONES = ("egemaps", "wavlm", "whisper")
UNITS = ("clips", "segments")
FEATURE_SETS = EgemapsBackbone.FEATURE_SETS
NORMALIZATIONS = ("none", "population", "enrolment")
#: Fewest validation speakers whose embeddings a reducer alignment is fitted on (see Settings.reducer_kwargs).
MIN_ALIGN_SPEAKERS = 2


@dataclass
class Settings:
    """What decides a fitted model: features, normalisation, head, its training, and the Stage II reducer.

    The defaults are those of the eGeMAPS path (``--backbone egemaps``); :data:`WAVLM_DEFAULTS` lists
    the ones the end-to-end WavLM path changes. Stored as they are in a bundle's provenance.
    """

    feature_set: str = "eGeMAPSv02"
    normalization: str = "enrolment"
    model: str = "head"  # head | lr
    augment: tuple[str, ...] = ()  # extra training copies from cached augmented features
    balance: str = "corpus+class"
    epochs: int = 80
    head_lr: float = 1e-3
    dropout: float = 0.2
    weight_decay: float = 1e-3
    feature_noise: float = 0.1
    label_smoothing: float = 0.0
    batch_size: int = 32
    hidden_dims: tuple[int, ...] = ()
    mixup: float = 0.0
    estimate_baselines: bool = False  # enrolment: estimate baselines of training speakers without neutral/calm
    patience: int = 15
    select: str = "uar"  # early stopping on the validation speakers' UAR or loss
    ema: float = 0.0  # exponential moving average of the head's weights (decay per step; 0 = off)
    ensemble: int = 1
    trim: bool = False
    calibrate: bool = True
    # Stage II: alignment of class centroids onto the anchors, fitted on the early-stopping (validation)
    # speakers' embeddings ("val") or on the training layout ("train"); other AnchoredReducer parameters
    reducer_align: str | None = None
    reducer_align_on: str = "val"
    reducer_params: dict[str, Any] = field(default_factory=dict)
    # what the head is trained on: whole clips, or the live VAD's speech segments of them (training.segments)
    units: str = "clips"
    backbone: str = "egemaps"
    # --backbone whisper: the weights, how segments are fed (sliced | padded to 30 s), how layers are weighted
    whisper_source: str = "package:whisper-base"
    whisper_input: str = "sliced"
    layer_mix: str = "learn"

    def reducer_kwargs(self, align_speakers: Sequence[str] = ()) -> tuple[dict[str, Any], bool]:
        """(AnchoredReducer parameters, whether the alignment is fitted on the validation speakers).

        An alignment on validation speakers needs at least ``MIN_ALIGN_SPEAKERS`` of them: class
        centroids of one speaker are too noisy a target for a 6-parameter map, so with fewer the
        reducer is left unaligned."""
        align = self.reducer_align
        on_val = align is not None and self.reducer_align_on == "val"
        if on_val and len(set(align_speakers)) < MIN_ALIGN_SPEAKERS:
            align, on_val = None, False
        return {"align": align, **self.reducer_params}, on_val

    def train_config(self, backbone: str = "egemaps", *, seed: int = 0, device: str = "auto",
                     precision: str = "auto", max_steps: int | None = None, encoder_lr: float | None = None,
                     max_seconds: float | None = None, num_workers: int | None = None) -> TrainConfig:
        """The ``TrainConfig`` of one head fit with these settings.

        ``backbone="egemaps"`` (the features path, also every held-out protocol) keeps at least 10
        epochs before early stopping may end a run; ``"wavlm"`` (end to end) has no feature noise
        or mixup, which act on cached feature vectors. ``encoder_lr``, ``max_seconds`` and
        ``num_workers`` are for the wavlm path; None keeps TrainConfig's default.
        """
        from training.train import TrainConfig

        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; known: {BACKBONES}")
        features = backbone != "wavlm"  # the features path: heads on cached feature vectors
        wave: dict[str, Any] = {k: v for k, v in (("encoder_lr", encoder_lr), ("max_seconds", max_seconds),
                                                  ("num_workers", num_workers)) if v is not None}
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, head_lr=self.head_lr,
                           dropout=self.dropout, weight_decay=self.weight_decay,
                           feature_noise=self.feature_noise if features else 0.0,
                           label_smoothing=self.label_smoothing, hidden_dims=tuple(self.hidden_dims),
                           mixup=self.mixup if features else 0.0, select=self.select, ema=self.ema,
                           balance=self.balance, seed=seed, patience=self.patience, min_epochs=10 if features else 1,
                           calibrate_temperature=self.calibrate, device=device, precision=precision,
                           max_steps=max_steps, **wave)

    def to_json(self) -> dict[str, Any]:
        """The fields as plain JSON values (tuples as lists), in field order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: The settings whose default depends on the backbone: the end-to-end WavLM path trains fewer epochs,
#: in smaller batches, at a lower head learning rate, on population-normalised features.
WAVLM_DEFAULTS: dict[str, Any] = {"normalization": "population", "epochs": 20, "batch_size": 8, "head_lr": 1e-4}
#: The frozen Whisper encoder's head trains on the segments the monitor embeds (the other settings are egemaps').
WHISPER_DEFAULTS: dict[str, Any] = {"units": "segments"}
#: Every setting whose default depends on the backbone, and its default per backbone (egemaps: the field default).
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {"egemaps": {}, "wavlm": WAVLM_DEFAULTS, "whisper": WHISPER_DEFAULTS}

_DEFAULT = Settings()


def defaults_for(backbone: str) -> Settings:
    """The default settings of a backbone."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {BACKBONES}")
    return replace(_DEFAULT, backbone=backbone, **BACKBONE_DEFAULTS[backbone])


def _by_backbone(name: str) -> str:
    """Help text for a default that depends on the backbone."""
    per = ", ".join(f"{defaults[name] if name in defaults else getattr(_DEFAULT, name)} ({b})"
                    for b, defaults in BACKBONE_DEFAULTS.items())
    return f"default: {per}"


def add_setting_args(parser: argparse.ArgumentParser) -> None:
    """The setting flags (every field of :class:`Settings`, plus ``--backbone``) on ``parser``."""
    g = parser.add_argument_group("model and training settings")
    g.add_argument("--backbone", default="egemaps", choices=BACKBONES,
                   help="egemaps: openSMILE functionals on the CPU (default); whisper: Whisper's frozen encoder, "
                        "layer-weighted (offline weights from the installed package by default); wavlm: a WavLM / "
                        "wav2vec2 / HuBERT encoder trained end to end (build only)")
    g.add_argument("--units", default=None, choices=UNITS,
                   help="train and evaluate on whole clips or on the live VAD's speech segments of them, which is "
                        f"what the monitor embeds ({_by_backbone('units')})")
    g.add_argument("--whisper-source", default=_DEFAULT.whisper_source, metavar="SRC",
                   help="whisper weights: package:whisper-base (offline, default), a transformers or CTranslate2 "
                        "Whisper folder, or a hub id such as openai/whisper-small")
    g.add_argument("--whisper-input", default=_DEFAULT.whisper_input, choices=("sliced", "padded"),
                   help="feed a segment's own frames (sliced, default: ~10x cheaper) or pad it to Whisper's 30 s")
    g.add_argument("--layer-mix", default=_DEFAULT.layer_mix, choices=("learn", "mean"),
                   help="whisper: learn softmax weights over the encoder's layers (default) or weight them equally")
    g.add_argument("--feature-set", default=_DEFAULT.feature_set, choices=FEATURE_SETS,
                   help="openSMILE functionals for --backbone egemaps (default: %(default)s)")
    g.add_argument("--normalization", default=None, choices=NORMALIZATIONS,
                   help="speaker calibration the model is trained with and the runtime applies "
                        f"({_by_backbone('normalization')})")
    g.add_argument("--model", default=_DEFAULT.model, choices=("head", "lr"),
                   help="head: the 100-d bottleneck head a bundle holds (default); lr: logistic regression, "
                        "a baseline for evaluate / experiment / ablate")
    g.add_argument("--augment", nargs="*", default=list(_DEFAULT.augment), metavar="AUG",
                   help=f"augmented training copies, one per entry: {' '.join(AUGMENTATIONS)}, or chains like "
                        "noise+reverb (egemaps: cached features; wavlm: all entries are chained into one "
                        "on-the-fly augmentation)")
    g.add_argument("--balance", default=_DEFAULT.balance, choices=BALANCE_MODES,
                   help="batches balanced over corpora and classes, classes only, or neither (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=None, help=_by_backbone("epochs"))
    g.add_argument("--batch-size", type=int, default=None, help=_by_backbone("batch_size"))
    g.add_argument("--head-lr", type=float, default=None, help=_by_backbone("head_lr"))
    g.add_argument("--dropout", type=float, default=_DEFAULT.dropout, help="(default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=_DEFAULT.weight_decay, help="(default: %(default)s)")
    g.add_argument("--feature-noise", type=float, default=_DEFAULT.feature_noise,
                   help="egemaps: Gaussian noise on normalised features (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=_DEFAULT.label_smoothing, help="(default: %(default)s)")
    g.add_argument("--hidden-dims", type=int, nargs="*", default=list(_DEFAULT.hidden_dims), metavar="N",
                   help="widths of an MLP encoder before the 100-d bottleneck (GELU, dropout); none = linear head")
    g.add_argument("--mixup", type=float, default=_DEFAULT.mixup,
                   help="egemaps: mixup Beta(a, a) of normalised features (default: %(default)s = off)")
    g.add_argument("--patience", type=int, default=_DEFAULT.patience,
                   help="epochs without improvement before early stopping (default: %(default)s)")
    g.add_argument("--select", default=_DEFAULT.select, choices=("uar", "loss"),
                   help="early stopping keeps the epoch with the best validation UAR (default) or loss")
    g.add_argument("--ema", type=float, default=_DEFAULT.ema,
                   help="decay of an exponential moving average of the weights, validated and kept instead "
                        "(default: %(default)s = off)")
    g.add_argument("--estimate-baselines", action="store_true",
                   help="enrolment: estimate baselines of training speakers without neutral/calm clips (JL)")
    g.add_argument("--ensemble", type=int, default=_DEFAULT.ensemble,
                   help="heads averaged per fit (evaluate / experiment / ablate; default: %(default)s)")
    g.add_argument("--trim", action="store_true", help="egemaps: cut leading/trailing silence before extraction")
    g.add_argument("--no-temperature", action="store_true",
                   help="skip temperature scaling of the probabilities on the validation speakers")
    r = parser.add_argument_group("Stage II reducer (calibration.reducer.AnchoredReducer)")
    r.add_argument("--reducer-align", default="none", choices=("none", "similarity", "affine"),
                   help="map class centroids onto their anchors after the fit (default: none)")
    r.add_argument("--reducer-align-on", default=_DEFAULT.reducer_align_on, choices=("val", "train"),
                   help="fit that map on the early-stopping speakers' embeddings (val, default) or the training layout")
    r.add_argument("--reducer-fast-neighbors", type=int, default=None, help="neighbours of the fast transform")
    r.add_argument("--reducer-n-neighbors", type=int, default=None, help="UMAP n_neighbors (reducer default 20)")
    r.add_argument("--reducer-target-weight", type=float, default=None, help="UMAP target_weight (reducer default 0.1)")


#: Reducer flags and the AnchoredReducer parameter each sets (unset flags keep the reducer's defaults).
_REDUCER_FLAGS = {"reducer_fast_neighbors": "fast_neighbors", "reducer_n_neighbors": "n_neighbors",
                  "reducer_target_weight": "target_weight"}
#: Settings fields not read from the flag of the same name (backbone defaults, tuples, negated or grouped flags).
_SPECIAL = {*WAVLM_DEFAULTS, *WHISPER_DEFAULTS, "augment", "hidden_dims", "calibrate", "reducer_align",
            "reducer_params", "backbone"}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of flags added by :func:`add_setting_args`, backbone defaults resolved."""
    base = defaults_for(args.backbone)
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name not in _SPECIAL}
    for name in {*WAVLM_DEFAULTS, *WHISPER_DEFAULTS}:  # None: the backbone's default
        value = getattr(args, name)
        given[name] = getattr(base, name) if value is None else value
    return replace(base, **given, augment=tuple(args.augment), hidden_dims=tuple(args.hidden_dims),
                   calibrate=not args.no_temperature,
                   reducer_align=None if args.reducer_align == "none" else args.reducer_align,
                   reducer_params={p: getattr(args, flag) for flag, p in _REDUCER_FLAGS.items()
                                   if getattr(args, flag) is not None})
