"""python -m training: Stage I training, held-out evaluation, settings search, ablations and audio scoring.

Subcommands
  build       corpora -> manifest -> features (cached) -> head -> embeddings.npz -> reducer -> bundle
  evaluate    the held-out protocols (speakers, corpus:emovo, corpus:ravdess) with given settings:
              3 seeds, the persistent-mood check, points from the fitted reducer
  experiment  the same protocols for a settings search: 1 seed by default, --no-mood, --mood-control
  ablate      one head per (protocol, fold, seed) and several Stage II reducer variants on it;
              --compare prints paired differences between two runs
  score       a bundle on a folder of audio: metrics.json + circumplex.png (calibration.evaluate)
  manifest    write the manifest CSV of some corpora and report skipped files
  extract     fill the feature cache (eGeMAPSv02 / ComParE_2016, optionally augmented copies)
  card        the model card's tables from a bundle's held-out metrics or an experiment's JSON

build, evaluate, experiment and ablate read the same setting flags with the same defaults
(training/settings.py), so a flag means the same model in each. `python -m training COMMAND --help`
lists a command's flags and examples.

Examples
  # the shipped default model (eGeMAPS, offline), with its model-card metrics:
  python -m training build --data-root ../shared/data --corpora ravdess emovo jl --balance class \\
      --hidden-dims 256 --reducer-fast-neighbors 40 --val-speakers ravdess:19 ravdess:20 emovo:m3 \\
      --name egemaps-ravdess-emovo-jl --version 2 --out monitor/model/bundles/egemaps \\
      --work-dir .cache/default_model_work --evaluate --eval-seeds 0 1 2

  # the held-out metrics of those settings without writing a bundle:
  python -m training evaluate --balance class --hidden-dims 256 --reducer-fast-neighbors 40

  # a quick settings search: one seed, reducer-free points, no persistent-mood replay:
  python -m training experiment --protocols speakers --balance class --points expected --no-mood

  # score a bundle on a folder of RAVDESS clips:
  python -m training score --bundle runs/my-model --audio ../shared/data/ravdess --out out/my-model-eval

Corpora are NAME (a folder under --data-root: ravdess, emovo, jl-corpus, emodb, crema-d,
IEMOCAP_full_release, mead) or NAME=PATH. A build writes manifest.csv, metrics.jsonl,
checkpoint.pt (resume with --resume) and embeddings.npz into --work-dir (default: --out), and the
bundle into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from training.experiments import PROTOCOLS
from training.settings import Settings, add_setting_args, settings_from_args

if TYPE_CHECKING:
    from calibration.speaker import FeatureNormalizer
    from training.corpora import Manifest
    from training.train import TrainConfig

log = logging.getLogger("training")

DEFAULT_VAL_SPEAKERS = ("ravdess:19", "ravdess:20", "emovo:m3")

EXAMPLES = {
    "build": """Examples
  # the shipped default model (eGeMAPS, offline), with its model-card metrics:
  python -m training build --data-root ../shared/data --corpora ravdess emovo jl --balance class \\
      --hidden-dims 256 --reducer-fast-neighbors 40 --val-speakers ravdess:19 ravdess:20 emovo:m3 \\
      --name egemaps-ravdess-emovo-jl --version 2 --out monitor/model/bundles/egemaps \\
      --work-dir .cache/default_model_work --evaluate --eval-seeds 0 1 2

  # WavLM end to end on a GPU (any WavLM / wav2vec2 / HuBERT hub id or local folder):
  python -m training build --backbone wavlm --source microsoft/wavlm-base-plus --finetune transformer \\
      --corpora iemocap=/data/IEMOCAP_full_release --epochs 20 --batch-size 8 --out runs/wavlm

  # your own corpus as a CSV (path,label[,speaker,split,valence,arousal,...]):
  python -m training build --corpora csv=my_clips.csv ravdess --data-root ../shared/data --out runs/mine

The early-stopping (validation) speakers are --val-speakers, else the adapters' val split, else
ravdess:19 ravdess:20 emovo:m3. manifest.csv, metrics.jsonl, checkpoint.pt and embeddings.npz go
into --work-dir (default: --out); the bundle goes into --out.
""",
    "evaluate": """Examples
  # the held-out metrics of the shipped model's settings (3 seeds, reducer points, persistent mood):
  python -m training evaluate --balance class --hidden-dims 256 --reducer-fast-neighbors 40 --out results.json

  # one protocol, population z-scoring instead of enrolment:
  python -m training evaluate --protocols corpus:emovo --normalization population

Protocols: speakers (RAVDESS 4-fold by actor, EMOVO and JL always in training), corpus:emovo (train
RAVDESS + JL, test EMOVO), corpus:ravdess (train EMOVO + JL, test RAVDESS). --backbone egemaps only.
""",
    "experiment": """Examples
  # settings search: one seed, reducer-free points (fast), no persistent-mood replay:
  python -m training experiment --balance class --points expected --no-mood --seeds 0

  # a logistic-regression baseline, and an ensemble of 3 heads:
  python -m training experiment --model lr --points expected --no-mood
  python -m training experiment --ensemble 3 --points expected --no-mood

  # the self-normalisation control of the persistent-mood check (it must fail):
  python -m training experiment --protocols speakers corpus:emovo --balance class --hidden-dims 256 \\
      --reducer-fast-neighbors 40 --mood-control --seeds 0

The same protocols and metrics as evaluate; only the defaults of --seeds differ (0 here, 0 1 2 there).
""",
    "ablate": """Examples
  python -m training ablate --tag linear --balance class --seeds 0 1 --out .cache/ablation
  python -m training ablate --tag mlp256 --balance class --hidden-dims 256 --seeds 0 1 --out .cache/ablation \\
      --reducers '{"red": {}, "fk40": {"fast_neighbors": 40}, "fk40_affval": {"fast_neighbors": 40,
                   "align": "affine", "_val": true}}'
  python -m training ablate --compare .cache/ablation/linear.json:red .cache/ablation/mlp256.json:fk40

Each reducer variant is a set of AnchoredReducer parameters; "_val": true fits the alignment on the
fold's early-stopping speakers, "_fit_val": true adds their embeddings to the UMAP fit. "exp" (the
probability-weighted anchor) is always scored too. Rows pair by (protocol, fold, seed). Run with nice.
""",
    "score": """Examples
  # RAVDESS file names carry the labels:
  python -m training score --bundle monitor/model/bundles/egemaps --audio ../shared/data/ravdess/Actor_01

  # any other folder: a CSV with path,label[,speaker,sentence,intensity,valence,arousal]:
  python -m training score --bundle runs/my-model --audio clips/ --manifest clips/labels.csv --out out/mine

Writes metrics.json and circumplex.png into --out (calibration.evaluate's report). To score a
bundle's reducer on exported embeddings instead: python -m calibration.evaluate.
""",
    "manifest": """Examples
  python -m training manifest --corpora ravdess emovo jl --out manifest.csv
  python -m training manifest --corpora iemocap=/data/IEMOCAP_full_release --iemocap-labels 5 --out iemocap.csv
""",
    "extract": """Examples
  python -m training extract --corpora ravdess emovo jl
  python -m training extract --variants clean noise reverb noise+reverb --feature-set ComParE_2016
  python -m training extract --backbone whisper --variants clean room      # live-VAD segments, Whisper layers
""",
    "card": """Examples
  python -m training card monitor/model/bundles/whisper       # the tables of docs/model_card.md
  python -m training card results.json                         # an experiment's --out
""",
}


# ---------------------------------------------------------------------------------------
# parser


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="../shared/data",
                   help="folder holding the corpus folders (default: %(default)s)")
    g.add_argument("--corpora", nargs="+", default=["ravdess", "emovo", "jl"],
                   help="NAME or NAME=PATH for each corpus; adapters: ravdess emovo jl emodb cremad iemocap mead csv "
                        "(default: ravdess emovo jl)")
    g.add_argument("--iemocap-labels", default="4", choices=("4", "4-noexc", "5", "9"),
                   help="IEMOCAP label set: 4 = neu/hap+exc/sad/ang (default), 5 adds frustrated, 9 = all")
    g.add_argument("--cache", default=".cache/features", help="feature cache folder (default: %(default)s)")


def _add_build_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--out", required=True, help="output folder: the bundle plus manifest/metrics/checkpoint/embeddings")
    b.add_argument("--work-dir", help="where checkpoint.pt, metrics.jsonl, manifest.csv and embeddings.npz go "
                                      "(default: --out; for a bundle you commit, point this elsewhere, "
                                      "e.g. .cache/run)")
    b.add_argument("--name", default=None, help="bundle name (default: the --out folder name)")
    b.add_argument("--version", default="1", help="bundle version (default: %(default)s)")
    b.add_argument("--val-speakers", nargs="*", default=None,
                   help="speakers held out for early stopping and temperature calibration, as corpus:speaker "
                        f"(default: the adapters' val split, else {' '.join(DEFAULT_VAL_SPEAKERS)})")
    b.add_argument("--evaluate", action="store_true",
                   help="also run the held-out protocols with the same settings and store their metrics in the bundle")
    b.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of --evaluate (default: 0 1 2)")
    b.add_argument("--resume", action="store_true", help="continue from --work-dir/checkpoint.pt")
    r = b.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto = AMP (bf16/fp16) on CUDA, fp32 on CPU")
    r.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (smoke tests)")
    w = b.add_argument_group("--backbone wavlm")
    w.add_argument("--source", help="hub id or local folder of a WavLM / wav2vec2 / HuBERT checkpoint")
    w.add_argument("--revision", help="hub revision (commit) to pin")
    w.add_argument("--finetune", default="frozen", choices=("frozen", "transformer"),
                   help="train only layer weights + head (frozen) or also the transformer (CNN stays frozen)")
    w.add_argument("--encoder-lr", type=float, default=None, help="learning rate of the encoder (default: 1e-5)")
    w.add_argument("--max-seconds", type=float, default=None, help="random crop of training clips in s (default: 8)")
    w.add_argument("--num-workers", type=int, default=None, help="data loader worker processes (default: 0)")
    w.add_argument("--embed-backbone", action="store_true",
                   help="copy the encoder into the bundle (always done when fine-tuned or from a local folder)")


def _add_protocol_args(p: argparse.ArgumentParser, seeds: list[int]) -> None:
    g = p.add_argument_group("protocols")
    g.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS, metavar="PROTOCOL",
                   help=f"{', '.join(PROTOCOLS)} (default: all)")
    g.add_argument("--seeds", nargs="+", type=int, default=seeds,
                   help=f"a head is fitted per fold and seed (default: {' '.join(map(str, seeds))})")
    g.add_argument("--points", default="reducer", choices=("reducer", "expected"),
                   help="reducer: points from the AnchoredReducer fitted on each fold (the runtime path, default); "
                        "expected: the probability-weighted mean of the class anchors (reducer-free, fast)")
    g.add_argument("--out", help="JSON file for settings, rows and summary")


def _add_score_args(s: argparse.ArgumentParser) -> None:
    from calibration.evaluate import DEFAULT_OUT

    s.add_argument("--bundle", required=True, help="model bundle folder (or the name of a shipped bundle)")
    s.add_argument("--audio", required=True, help="folder of audio files (.wav, .flac, .ogg; searched recursively)")
    s.add_argument("--manifest", help="CSV with path,label[,speaker,sentence,intensity,valence,arousal]; paths "
                                      "relative to --audio (default: labels from RAVDESS file names)")
    s.add_argument("--method", default="fast", choices=("fast", "umap"),
                   help="transform: fast (the streaming path, default) or umap (UMAP's own transform)")
    s.add_argument("--anchors", default=None,
                   help="anchor set name or .json file for labels the reducer was not fitted on "
                        "(default: the reducer's anchors, completed from the full table)")
    s.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    s.add_argument("--title", default=None, help="plot title (default: derived from the inputs)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=f"{summary}.", epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        return c

    b = command("build", "train a model and write a bundle")
    _add_data_args(b)
    add_setting_args(b)
    _add_build_args(b)

    e = command("evaluate", "held-out speaker / corpus protocols and the persistent-mood check")
    _add_data_args(e)
    add_setting_args(e)
    _add_protocol_args(e, seeds=[0, 1, 2])
    e.set_defaults(no_mood=False, mood_control=False)

    x = command("experiment", "the held-out protocols for a settings search")
    _add_data_args(x)
    add_setting_args(x)
    _add_protocol_args(x, seeds=[0])
    x.add_argument("--no-mood", action="store_true", help="skip the persistent-mood replay")
    x.add_argument("--mood-control", action="store_true",
                   help="also replay the persistent-mood sessions with self-normalisation (must fail)")

    a = command("ablate", "paired ablations of Stage II reducer variants on one head per fold")
    _add_data_args(a)
    add_setting_args(a)
    a.add_argument("--tag", help="name of the run (the output file is OUT/TAG.json)")
    a.add_argument("--protocols", nargs="+", default=["speakers"], choices=PROTOCOLS, metavar="PROTOCOL",
                   help=f"{', '.join(PROTOCOLS)} (default: speakers)")
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="(default: 0 1)")
    a.add_argument("--reducers", default=None,
                   help="JSON {name: AnchoredReducer params (+ \"_val\": true, \"_fit_val\": true)} "
                        "(default: an unaligned reducer \"red\" and an affine alignment on val \"affval\")")
    a.add_argument("--out", default=".cache/ablation", help="folder for TAG.json (default: %(default)s)")
    a.add_argument("--compare", nargs="+", metavar="FILE.json:POINTS",
                   help="print paired deltas of each later run against the first, and exit")

    s = command("score", "score a bundle on a folder of audio")
    _add_score_args(s)

    m = command("manifest", "write a manifest CSV and report skipped files")
    _add_data_args(m)
    m.add_argument("--out", required=True, help="the manifest CSV to write")

    t = command("extract", "fill the feature cache")
    _add_data_args(t)
    add_setting_args(t)
    t.add_argument("--variants", nargs="+", default=["clean"],
                   help="clean, or augmentations such as room, noise, reverb, noise+reverb (default: clean)")

    c = command("card", "print the model card's tables (held-out scores, lean of a new speaker)")
    c.add_argument("source", help="a bundle folder or bundle.json (its held-out metrics), or an experiment JSON")
    return p


# ---------------------------------------------------------------------------------------
# shared steps


def _manifest(args: argparse.Namespace) -> Manifest:
    from training.corpora import load_corpora

    options = {"iemocap": {"labels": args.iemocap_labels}}
    manifest = load_corpora(args.corpora, data_root=args.data_root, **options)
    if manifest.skipped:
        log.warning(manifest.report())
    if not len(manifest):
        raise SystemExit("no usable clips in the given corpora")
    return manifest


def _features(args: argparse.Namespace, manifest: Manifest, settings: Settings,
              progress: bool = True) -> tuple[np.ndarray, Manifest, list[np.ndarray]]:
    from training.features import feature_matrices

    return feature_matrices(manifest, settings, cache=args.cache, progress=progress)


def _features_only(args: argparse.Namespace) -> None:
    if args.backbone == "wavlm":
        raise SystemExit(f"{args.command} runs on cached features (--backbone egemaps or whisper); "
                         "for wavlm, build with held-out splits and read the bundle's metrics")


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=list))


# ---------------------------------------------------------------------------------------
# commands


def cmd_manifest(args: argparse.Namespace) -> int:
    manifest = _manifest(args)
    manifest.to_csv(args.out)
    print(json.dumps(manifest.summary(), indent=1))
    print(manifest.report())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from training.augment import Augmentation
    from training.features import extract, make_featurizer

    _features_only(args)
    settings = settings_from_args(args)
    manifest = _manifest(args)
    if settings.units == "segments":
        from training.segments import segment_manifest

        manifest = segment_manifest(manifest, cache=Path(args.cache))
    featurizer = make_featurizer(settings.feature_set, settings.backbone, settings.whisper_source,
                                 settings.whisper_input)
    for variant in args.variants:
        aug = None if variant == "clean" else Augmentation.from_spec(variant)
        table = extract(manifest, featurizer, augmentation=aug, cache=args.cache)
        print(f"{featurizer.name} [{variant}]: {table.X.shape[0]} items, {len(table.failed)} failed")
    return 0


def cmd_protocols(args: argparse.Namespace) -> int:
    """``evaluate`` and ``experiment``: every fold x seed of the protocols, a summary table, optionally JSON."""
    from training.experiments import format_summary, run_protocol, summarize

    _features_only(args)
    settings = settings_from_args(args)
    X, manifest, X_aug = _features(args, _manifest(args), settings)
    rows = []
    for protocol in args.protocols:
        rows += run_protocol(X, manifest, protocol, settings, args.seeds, X_aug, with_reducer=args.points == "reducer",
                             mood=not args.no_mood, mood_control=args.mood_control)
    summary = summarize(rows)
    print(format_summary(summary))
    if args.out:
        _write_json(args.out, {"settings": settings.to_json(), "argv": args.argv, "rows": rows, "summary": summary})
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from training.ablation import DEFAULT_REDUCERS, compare, run

    if args.compare:
        for spec in args.compare[1:]:
            print("\n".join(compare(args.compare[0], spec)))
        return 0
    if not args.tag:
        raise SystemExit("python -m training ablate: --tag is required to run (or --compare FILE.json:POINTS ...)")
    _features_only(args)
    settings = settings_from_args(args)
    X, manifest, X_aug = _features(args, _manifest(args), settings, progress=False)
    result = run(args.tag, X, manifest, settings, args.protocols, args.seeds,
                 json.loads(args.reducers or DEFAULT_REDUCERS), X_aug)
    _write_json(Path(args.out) / f"{args.tag}.json", result)
    for key, cols in result["summary"].items():
        print(args.tag, key, " ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in cols.items()))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from training.evaluate_audio import score_audio

    return score_audio(args.bundle, args.audio, args.manifest, args.method, args.anchors, args.out, args.title)


# ---------------------------------------------------------------------------------------
# build


def _val_mask(manifest: Manifest, val_speakers: Sequence[str] | None) -> np.ndarray:
    speakers = manifest.speakers
    if val_speakers:
        return np.isin(speakers, list(val_speakers))
    if (manifest.splits == "val").any():
        return np.asarray(manifest.splits == "val")
    return np.isin(speakers, list(DEFAULT_VAL_SPEAKERS))


def _mark_splits(manifest: Manifest, val: np.ndarray, work: Path) -> Manifest:
    """The split column as this build uses it (val = early stopping / calibration, train = the rest)."""
    from training.corpora import Manifest

    marked = Manifest([replace(it, split="val" if v else "train") for it, v in zip(manifest, val, strict=True)],
                      list(manifest.skipped))
    marked.to_csv(work / "manifest.csv")
    return marked


def _check_build(args: argparse.Namespace, settings: Settings) -> None:
    """Settings a bundle cannot hold, or that the chosen backbone does not use, stop the build before it starts."""
    if settings.model != "head" or settings.ensemble != 1:
        raise SystemExit("a bundle holds one head: --model lr and --ensemble are for evaluate / experiment / ablate")
    if args.backbone != "wavlm":
        return
    if not args.source:
        raise SystemExit("--backbone wavlm needs --source (a hub id such as microsoft/wavlm-base-plus, "
                         "or a local folder)")
    if settings.normalization == "enrolment":
        raise SystemExit("--backbone wavlm supports --normalization population or none (enrolment shifts are defined "
                         "on fixed features: use --backbone egemaps)")
    if settings.trim or settings.estimate_baselines:
        raise SystemExit("--trim and --estimate-baselines act on cached egemaps features, not on --backbone wavlm")


def cmd_build(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _check_build(args, settings)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out
    work.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(args)
    manifest.to_csv(work / "manifest.csv")
    if args.backbone == "wavlm":
        return _build_wavlm(args, manifest, settings, out, work)
    return _build_features(args, manifest, settings, out, work)


@dataclass
class _Trained:
    """What a build path hands the shared tail (:func:`_finish`): the trained parts and every clip's outputs."""

    labels: list[str]
    head: Any  # monitor.model.head.EmotionHead
    normalizer: FeatureNormalizer
    config: TrainConfig
    backbone_spec: dict[str, Any]
    embeddings: np.ndarray  # of every clip of the manifest
    probabilities: np.ndarray
    validation: dict[str, Any]  # metrics on the early-stopping speakers
    backbone_state: dict[str, Any] | None = None
    encoder: Any = None
    config_extra: dict[str, Any] = field(default_factory=dict)


#: Fewest training clips a build fits a reducer on (UMAP's default neighbourhood is 20 clips).
MIN_REDUCER_CLIPS = 22


def _bundle_reducer(emb: np.ndarray, manifest: Manifest, val: np.ndarray, settings: Settings) -> Any:
    """The Stage II reducer of a build: fitted on the training clips' embeddings with the settings' reducer
    parameters (the alignment on the early-stopping speakers' embeddings when asked and there are two or more);
    None when there are too few training clips or classes."""
    from training.export import fit_reducer

    tr = ~val
    if len(set(manifest.labels[tr].tolist())) < 2 or tr.sum() < MIN_REDUCER_CLIPS:
        log.warning("%d training clips: too few for a reducer; the bundle has none", int(tr.sum()))
        return None
    params, on_val = settings.reducer_kwargs(manifest.speakers[val].tolist())
    return fit_reducer(emb[tr], manifest.labels[tr], X_align=emb[val] if on_val else None,
                       y_align=manifest.labels[val] if on_val else None, **params)


def _finish(args: argparse.Namespace, settings: Settings, manifest: Manifest, val: np.ndarray, t: _Trained,
            out: Path, work: Path, held_out: Callable[[], dict[str, Any]] | None = None) -> int:
    """embeddings.npz, the reducer, validation (+ held-out) metrics, provenance, and the bundle: both backbones."""
    from calibration.metrics import anchor_agreement
    from training.experiments import ANCHORS, format_summary
    from training.export import export_embeddings, make_bundle, provenance

    export_embeddings(work / "embeddings.npz", t.embeddings, manifest, t.probabilities, t.labels)
    reducer = _bundle_reducer(t.embeddings, manifest, val, settings)
    validation = dict(t.validation)
    if reducer is not None:
        points = reducer.transform(t.embeddings[val])
        ccc = anchor_agreement(points, manifest.labels[val], ANCHORS)
        validation.update({f"val_ccc_{k}": v for k, v in ccc.items()})
    metrics: dict[str, Any] = {"validation": validation}
    if held_out is not None:
        metrics["held_out"] = held_out()
    config_json = {**settings.to_json(), "train": t.config.to_json(), **t.config_extra,
                   "val_speakers": sorted(set(manifest.speakers[val].tolist()))}
    if reducer is not None:
        config_json["reducer"] = {k: v for k, v in reducer.get_params().items()
                                  if isinstance(v, (int, float, str, type(None)))}
    prov = provenance(manifest, config_json, command=["python", "-m", "training", *args.argv],
                      extra={"skipped_files": len(manifest.skipped)})
    bundle = make_bundle(backbone_spec=t.backbone_spec, labels=t.labels, head=t.head, normalizer=t.normalizer,
                         reducer=reducer, anchor_set="all", name=args.name or out.name, version=args.version,
                         provenance=prov, metrics=metrics, backbone_state=t.backbone_state, encoder=t.encoder)
    bundle.save(out)
    print(json.dumps({"bundle": str(out), "model_id": bundle.model_id, **validation}, indent=1))
    if "held_out" in metrics:
        print(format_summary(metrics["held_out"]["protocols"]))
    return 0


def _evaluate_metrics(args: argparse.Namespace, X: np.ndarray, manifest: Manifest, settings: Settings,
                      X_aug: list[np.ndarray]) -> dict[str, Any]:
    """build --evaluate: the held-out protocols the manifest's corpora allow, with the build's settings."""
    from training.experiments import available_protocols, run_protocol, summarize

    rows = []
    for protocol in available_protocols(manifest):
        rows += run_protocol(X, manifest, protocol, settings, args.eval_seeds, X_aug, with_reducer=True)
    return {"protocols": summarize(rows), "rows": rows,
            "note": "mean/std/min/max over folds x seeds; points from the fitted reducer; see docs/model_card.md"}


def _build_features(args: argparse.Namespace, manifest: Manifest, settings: Settings, out: Path, work: Path) -> int:
    import torch

    from calibration.metrics import uar
    from training.experiments import FittedModel, fit_mix, predict_clips, training_rows, validation_rows
    from training.train import train_head

    torch.set_num_threads(1)  # a small head on features: extra threads only contend
    X_raw, manifest, X_aug_raw = _features(args, manifest, settings)
    val = _val_mask(manifest, args.val_speakers)
    tr = ~val
    manifest = _mark_splits(manifest, val, work)
    X, X_aug, mix = X_raw, X_aug_raw, None
    if X_raw.ndim == 3:  # a layer-weighted backbone: its layer weights are fitted on the training rows
        mix = fit_mix(X_raw, X_aug_raw, manifest, tr, settings, args.seed)
        X, X_aug = mix.transform(X_raw), [mix.transform(a) for a in X_aug_raw]
        log.info("layer weights: %s", mix.summary()["layer_weights"])
    labels = sorted(set(manifest.labels[tr].tolist()))
    normalizer, Xtr, ytr, ctr = training_rows(X, manifest, tr, labels, settings, X_aug)
    Xv, yv, keep = validation_rows(normalizer, X[val], manifest[val], labels, settings.normalization)
    config = settings.train_config("egemaps", seed=args.seed, device=args.device, precision=args.precision,
                                   max_steps=args.max_steps)
    head, result = train_head(Xtr, ytr, labels, config, Xv, yv, corpora=ctr, out_dir=work, resume=args.resume,
                              progress=True)
    log.info("head: best epoch %d, validation UAR %.3f, temperature %.2f", result.best_epoch, result.best_score,
             result.temperature)
    # embeddings of every clip (each with its speaker's leave-one-out enrolment baseline)
    probs, emb = predict_clips(FittedModel(labels, normalizer, [head], "head"), X, manifest, settings.normalization)
    assert emb is not None  # a head has embeddings
    validation = {"val_uar": uar(manifest.labels[val][keep], np.asarray(labels)[probs[val][keep].argmax(1)]),
                  "val_best_epoch": result.best_epoch, "temperature": result.temperature}
    trained = _Trained(labels, head, normalizer, config, _feature_spec(settings, X), emb, probs, validation,
                       backbone_state=mix.backbone_state() if mix is not None else None,
                       config_extra=mix.summary() if mix is not None else {})
    held_out = (lambda: _evaluate_metrics(args, X_raw, manifest, settings, X_aug_raw)) if args.evaluate else None
    return _finish(args, settings, manifest, val, trained, out, work, held_out)


def _feature_spec(settings: Settings, X: np.ndarray) -> dict[str, Any]:
    """The bundle's backbone spec for a features-path build."""
    if settings.backbone == "whisper":
        from monitor.model.whisper import WhisperBackbone

        return WhisperBackbone.from_pretrained(settings.whisper_source, input_mode=settings.whisper_input).spec()
    return {"kind": "egemaps", "feature_set": settings.feature_set, "feature_dim": int(X.shape[1])}


def _build_wavlm(args: argparse.Namespace, manifest: Manifest, settings: Settings, out: Path, work: Path) -> int:
    from monitor.model.wavlm import WavLMBackbone
    from training.augment import Augmentation
    from training.train import frozen_features, predict_head, train_wavlm

    backbone = WavLMBackbone.from_pretrained(args.source, revision=args.revision, finetune=args.finetune)
    val = _val_mask(manifest, args.val_speakers)
    manifest = _mark_splits(manifest, val, work)
    labels = sorted(set(manifest.labels[~val].tolist()))
    val_items = [it for it, v in zip(manifest, val, strict=True) if v and it.label in labels]
    train_items = [it for it, v in zip(manifest, val, strict=True) if not v]
    config = settings.train_config("wavlm", seed=args.seed, device=args.device, precision=args.precision,
                                   max_steps=args.max_steps, encoder_lr=args.encoder_lr, max_seconds=args.max_seconds,
                                   num_workers=args.num_workers)
    # on the fly, new draws every epoch; the --augment entries are chained into one augmentation
    aug = Augmentation.from_spec("+".join(settings.augment), seed=args.seed) if settings.augment else None
    backbone, head, normalizer, result = train_wavlm(backbone, train_items, val_items, labels, config,
                                                     normalization=settings.normalization, out_dir=work,
                                                     resume=args.resume, augmentation=aug)
    device = next(head.parameters()).device
    feats = frozen_features(backbone, [it.path for it in manifest], device, batch_size=config.batch_size)
    head = head.cpu()
    emb, probs = predict_head(head, normalizer.apply(feats))
    spec = backbone.spec()
    spec["normalize_waveform"] = bool(backbone.normalize_waveform)
    encoder = None
    local = Path(args.source).is_dir()
    if args.finetune != "frozen" or args.embed_backbone or local:
        spec["source"] = "bundle:backbone"
        spec["origin"] = "local folder" if local else args.source
        encoder = backbone.encoder
    validation = {"val_uar": result.best_score, "val_best_epoch": result.best_epoch,
                  "temperature": result.temperature, "steps": result.steps}
    trained = _Trained(labels, head, normalizer, config, spec, emb, probs, validation,
                       backbone_state=backbone.bundle_state(), encoder=encoder,
                       config_extra={"finetune": args.finetune})
    return _finish(args, settings, manifest, val, trained, out, work)


def cmd_card(args: argparse.Namespace) -> int:
    """Print the model card's tables from a bundle's held-out metrics or an experiment's JSON."""
    from training.card import card_tables, load_summary

    print(card_tables(load_summary(args.source)), end="")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": cmd_build, "evaluate": cmd_protocols, "experiment": cmd_protocols, "ablate": cmd_ablate,
    "score": cmd_score, "manifest": cmd_manifest, "extract": cmd_extract, "card": cmd_card,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in a bundle's provenance and in evaluate / experiment JSON
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
