"""python -m training: from corpus folders to a finished model bundle, in one command.

Subcommands
  build      corpora -> manifest -> features (cached) -> head -> embeddings.npz -> reducer -> bundle
  evaluate   the held-out protocols (speakers, corpus:emovo, corpus:ravdess) with given settings
  manifest   write the manifest CSV of some corpora and report skipped files
  extract    fill the feature cache (eGeMAPSv02 / ComParE_2016, optionally augmented copies)

Examples
  # the shipped default model (eGeMAPS, offline), with its model-card metrics:
  python -m training build --data-root ../shared/data --corpora ravdess emovo jl \\
      --out monitor/default_model --work-dir .cache/default_model_work --evaluate

  # WavLM end to end on a GPU (any WavLM / wav2vec2 / HuBERT hub id or local folder):
  python -m training build --backbone wavlm --source microsoft/wavlm-base-plus --finetune transformer \\
      --corpora iemocap=/data/IEMOCAP_full_release --epochs 20 --batch-size 8 --out runs/wavlm

  # your own corpus as a CSV (path,label[,speaker,split,valence,arousal,...]):
  python -m training build --corpora csv=my_clips.csv ravdess --data-root ../shared/data --out runs/mine

Corpora are NAME (a folder under --data-root: ravdess, emovo, jl-corpus, emodb, crema-d,
IEMOCAP_full_release, mead) or NAME=PATH. Every run writes manifest.csv, metrics.jsonl,
checkpoint.pt (resume with --resume) and embeddings.npz into --work-dir (default: --out), and the
bundle into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger("training")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default="../shared/data", help="folder holding the corpus folders (default: ../shared/data)")
    p.add_argument("--corpora", nargs="+", default=["ravdess", "emovo", "jl"],
                   help="NAME or NAME=PATH for each corpus; adapters: ravdess emovo jl emodb cremad iemocap mead csv")
    p.add_argument("--iemocap-labels", default="4", choices=("4", "4-noexc", "5", "9"),
                   help="IEMOCAP label set: 4 = neu/hap+exc/sad/ang (default), 5 adds frustrated, 9 = all")
    p.add_argument("--cache", default=".cache/features", help="feature cache folder (default: .cache/features)")


def _add_setting_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training settings")
    g.add_argument("--backbone", default="egemaps", choices=("egemaps", "wavlm"))
    g.add_argument("--feature-set", default="eGeMAPSv02", choices=("eGeMAPSv02", "ComParE_2016"),
                   help="openSMILE functionals for --backbone egemaps")
    g.add_argument("--source", help="wavlm: hub id or local folder of a WavLM / wav2vec2 / HuBERT checkpoint")
    g.add_argument("--revision", help="wavlm: hub revision (commit) to pin")
    g.add_argument("--finetune", default="frozen", choices=("frozen", "transformer"),
                   help="wavlm: train only layer weights + head (frozen) or also the transformer (CNN stays frozen)")
    g.add_argument("--normalization", default=None, choices=("none", "population", "enrolment"),
                   help="speaker calibration the model is trained with and the runtime applies "
                        "(default: enrolment for egemaps, population for wavlm)")
    g.add_argument("--augment", nargs="*", default=[], metavar="AUG",
                   help="extra augmented training copies: noise gain speed reverb, or chains like noise+reverb")
    g.add_argument("--balance", default="corpus+class", choices=("corpus+class", "class", "none"))
    g.add_argument("--epochs", type=int, default=None, help="default: 80 (egemaps), 20 (wavlm)")
    g.add_argument("--batch-size", type=int, default=None, help="default: 32 (egemaps), 8 (wavlm)")
    g.add_argument("--head-lr", type=float, default=None, help="default: 1e-3 (egemaps), 1e-4 (wavlm)")
    g.add_argument("--encoder-lr", type=float, default=1e-5)
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--weight-decay", type=float, default=1e-3)
    g.add_argument("--feature-noise", type=float, default=0.1, help="egemaps: Gaussian noise on normalised features")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--hidden-dims", type=int, nargs="*", default=[], metavar="N",
                   help="widths of an MLP encoder before the 100-d bottleneck (GELU, dropout); none = linear head")
    g.add_argument("--mixup", type=float, default=0.0, help="egemaps: mixup Beta(a, a) of normalised features (0 = off)")
    g.add_argument("--patience", type=int, default=15)
    r = p.add_argument_group("Stage II reducer (calibration.reducer.AnchoredReducer)")
    r.add_argument("--reducer-align", default="none", choices=("none", "similarity", "affine"),
                   help="map class centroids onto their anchors after the fit (default: none)")
    r.add_argument("--reducer-align-on", default="val", choices=("val", "train"),
                   help="fit that map on the early-stopping speakers' embeddings (val, default) or the training layout")
    r.add_argument("--reducer-fast-neighbors", type=int, default=None, help="neighbours of the fast transform")
    r.add_argument("--reducer-n-neighbors", type=int, default=None, help="UMAP n_neighbors (reducer default 20)")
    r.add_argument("--reducer-target-weight", type=float, default=None, help="UMAP target_weight (reducer default 0.1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto = AMP (bf16/fp16) on CUDA, fp32 on CPU")
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (smoke tests)")
    g.add_argument("--max-seconds", type=float, default=8.0, help="wavlm: random crop of training clips (s)")
    g.add_argument("--num-workers", type=int, default=0, help="wavlm: data loader worker processes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="train a model and write a bundle", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(b)
    _add_setting_args(b)
    b.add_argument("--out", required=True, help="output folder: the bundle plus manifest/metrics/checkpoint/embeddings")
    b.add_argument("--work-dir", help="where checkpoint.pt, metrics.jsonl, manifest.csv and embeddings.npz go (default: --out; "
                                      "for a bundle you commit, point this elsewhere, e.g. .cache/run)")
    b.add_argument("--name", default=None, help="bundle name (default: the --out folder name)")
    b.add_argument("--version", default="1")
    b.add_argument("--val-speakers", nargs="*", default=None,
                   help="speakers held out for early stopping and temperature calibration, as corpus:speaker "
                        "(default: the adapters' val split, else ravdess:19 ravdess:20 emovo:m3)")
    b.add_argument("--evaluate", action="store_true",
                   help="also run the held-out protocols with the same settings and store their metrics in the bundle")
    b.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1, 2])
    b.add_argument("--resume", action="store_true", help="continue from --work-dir/checkpoint.pt")
    b.add_argument("--embed-backbone", action="store_true",
                   help="wavlm: copy the encoder into the bundle (always done when fine-tuned or from a local folder)")
    b.add_argument("-v", "--verbose", action="store_true")

    e = sub.add_parser("evaluate", help="held-out speaker / corpus protocols and the persistent-mood check")
    _add_data_args(e)
    _add_setting_args(e)
    e.add_argument("--protocols", nargs="+", default=["speakers", "corpus:emovo", "corpus:ravdess"])
    e.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    e.add_argument("--points", default="reducer", choices=("expected", "reducer"))
    e.add_argument("--out", help="JSON file for rows + summary")

    m = sub.add_parser("manifest", help="write a manifest CSV and report skipped files")
    _add_data_args(m)
    m.add_argument("--out", required=True)

    x = sub.add_parser("extract", help="fill the feature cache")
    _add_data_args(x)
    x.add_argument("--feature-set", default="eGeMAPSv02", choices=("eGeMAPSv02", "ComParE_2016"))
    x.add_argument("--variants", nargs="+", default=["clean"], help="clean, noise, gain, speed, reverb, noise+reverb, ...")
    return p


def _manifest(args):
    from training.corpora import load_corpora

    options = {"iemocap": {"labels": args.iemocap_labels}}
    manifest = load_corpora(args.corpora, data_root=args.data_root, **options)
    if manifest.skipped:
        log.warning(manifest.report())
    if not len(manifest):
        raise SystemExit("no usable clips in the given corpora")
    return manifest


def _settings(args):
    from training.experiments import Settings

    egemaps = args.backbone == "egemaps"
    return Settings(feature_set=args.feature_set, normalization=args.normalization or ("enrolment" if egemaps else "population"),
                    model="head", augment=tuple(args.augment), balance=args.balance,
                    epochs=args.epochs or (80 if egemaps else 20), head_lr=args.head_lr or (1e-3 if egemaps else 1e-4),
                    dropout=args.dropout, weight_decay=args.weight_decay, feature_noise=args.feature_noise,
                    label_smoothing=args.label_smoothing, batch_size=args.batch_size or (32 if egemaps else 8),
                    hidden_dims=tuple(args.hidden_dims), mixup=args.mixup, patience=args.patience,
                    reducer_align=None if args.reducer_align == "none" else args.reducer_align,
                    reducer_align_on=args.reducer_align_on, reducer_params=_reducer_params(args))


def _reducer_params(args) -> dict:
    """AnchoredReducer parameters given on the command line (the rest stay at the reducer's defaults)."""
    given = {"fast_neighbors": args.reducer_fast_neighbors, "n_neighbors": args.reducer_n_neighbors,
             "target_weight": args.reducer_target_weight}
    return {k: v for k, v in given.items() if v is not None}


def cmd_manifest(args) -> int:
    manifest = _manifest(args)
    manifest.to_csv(args.out)
    print(json.dumps(manifest.summary(), indent=1))
    print(manifest.report())
    return 0


def cmd_extract(args) -> int:
    from training.augment import Augmentation
    from training.features import extract, make_featurizer

    manifest = _manifest(args)
    featurizer = make_featurizer(args.feature_set)
    for variant in args.variants:
        aug = None if variant == "clean" else Augmentation.from_spec(variant)
        table = extract(manifest, featurizer, augmentation=aug, cache=args.cache)
        print(f"{args.feature_set} [{variant}]: {table.X.shape[0]} clips, {len(table.failed)} failed")
    return 0


def cmd_evaluate(args) -> int:
    from training.experiments import format_summary, run_protocol, summarize

    if args.backbone != "egemaps":
        raise SystemExit("evaluate runs on cached openSMILE features (--backbone egemaps); "
                         "for wavlm, build with held-out splits and read the bundle's metrics")
    settings = _settings(args)
    X, manifest, X_aug = _features(args, _manifest(args), settings)
    rows = []
    for protocol in args.protocols:
        rows += run_protocol(X, manifest, protocol, settings, args.seeds, X_aug, with_reducer=args.points == "reducer")
    summary = summarize(rows)
    print(format_summary(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": settings.__dict__, "rows": rows, "summary": summary},
                                             indent=1, default=list))
    return 0


def _features(args, manifest, settings):
    from training.augment import Augmentation
    from training.features import extract, make_featurizer

    featurizer = make_featurizer(settings.feature_set)
    table = extract(manifest, featurizer, cache=args.cache)
    manifest = table.manifest
    X_aug = []
    for aug in settings.augment:
        t = extract(manifest, featurizer, augmentation=Augmentation.from_spec(aug), cache=args.cache)
        if len(t.manifest) != len(manifest):
            raise SystemExit(f"augmentation {aug} failed on {len(t.failed)} clips: {t.failed[:3]}")
        X_aug.append(t.X.astype(np.float64))
    return table.X.astype(np.float64), manifest, X_aug


DEFAULT_VAL_SPEAKERS = ("ravdess:19", "ravdess:20", "emovo:m3")


def _val_mask(manifest, val_speakers: Sequence[str] | None) -> np.ndarray:
    speakers = manifest.speakers
    if val_speakers:
        return np.isin(speakers, list(val_speakers))
    if (manifest.splits == "val").any():
        return manifest.splits == "val"
    return np.isin(speakers, list(DEFAULT_VAL_SPEAKERS))


def _mark_splits(manifest, val: np.ndarray, work: Path):
    """The split column as this build uses it (val = early stopping / calibration, train = the rest)."""
    from dataclasses import replace

    from training.corpora import Manifest

    marked = Manifest([replace(it, split="val" if v else "train") for it, v in zip(manifest, val)], list(manifest.skipped))
    marked.to_csv(work / "manifest.csv")
    return marked


def cmd_build(args) -> int:
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out
    work.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(args)
    manifest.to_csv(work / "manifest.csv")
    settings = _settings(args)
    if args.backbone == "wavlm":
        return _build_wavlm(args, manifest, settings, out, work)
    return _build_features(args, manifest, settings, out, work)


def _evaluate_metrics(args, X, manifest, settings, X_aug) -> dict:
    from training.experiments import run_protocol, summarize

    rows = []
    present = set(manifest.corpora.tolist())
    protocols = [p for p, need in (("speakers", {"ravdess"}), ("corpus:emovo", {"ravdess", "emovo"}),
                                   ("corpus:ravdess", {"ravdess", "emovo"})) if need <= present]
    for protocol in protocols:
        rows += run_protocol(X, manifest, protocol, settings, args.eval_seeds, X_aug, with_reducer=True)
    return {"protocols": summarize(rows), "rows": rows,
            "note": "mean/std/min/max over folds x seeds; points from the fitted reducer; see docs/model_card.md"}


def _build_features(args, manifest, settings, out: Path, work: Path) -> int:
    from training.experiments import ANCHORS, FittedModel, predict_clips
    from training.export import export_embeddings, fit_reducer, make_bundle, provenance
    from calibration.metrics import anchor_agreement, uar
    from calibration.speaker import baselines_from_clips, fit_normalizer, normalize_speakers
    from training.train import TrainConfig, train_head

    import torch

    torch.set_num_threads(1)  # a small head on features: extra threads only contend
    X, manifest, X_aug = _features(args, manifest, settings)
    val = _val_mask(manifest, args.val_speakers)
    tr = ~val
    manifest = _mark_splits(manifest, val, work)
    labels = sorted(set(manifest.labels[tr].tolist()))
    normalizer, Xn = fit_normalizer(X[tr], manifest.labels[tr], manifest.speakers[tr], settings.normalization)
    y = np.asarray([labels.index(c) for c in manifest.labels[tr]])
    corpora = manifest.corpora[tr]
    Xs, ys, cs = [Xn], [y], [corpora]
    for Xa in X_aug:
        # an augmented copy's baseline comes from the same speaker's augmented neutral/calm clips
        bases = baselines_from_clips(Xa[tr], manifest.labels[tr], manifest.speakers[tr]) \
            if settings.normalization == "enrolment" else {}
        Xs.append(normalize_speakers(normalizer, Xa[tr], manifest.speakers[tr], bases))
        ys.append(y)
        cs.append(corpora)
    val_bases = baselines_from_clips(X[val], manifest.labels[val], manifest.speakers[val]) \
        if settings.normalization == "enrolment" else {}
    keep = np.isin(manifest.labels[val], labels)
    Xv = normalize_speakers(normalizer, X[val], manifest.speakers[val], val_bases)[keep]
    yv = np.asarray([labels.index(c) for c in manifest.labels[val][keep]])
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, head_lr=settings.head_lr,
                         dropout=settings.dropout, weight_decay=settings.weight_decay, feature_noise=settings.feature_noise,
                         label_smoothing=settings.label_smoothing, balance=settings.balance, seed=args.seed,
                         hidden_dims=tuple(settings.hidden_dims), mixup=settings.mixup,
                         patience=args.patience, min_epochs=10, device=args.device, precision=args.precision,
                         max_steps=args.max_steps)
    head, result = train_head(np.concatenate(Xs), np.concatenate(ys), labels, config, Xv, yv,
                              corpora=np.concatenate(cs), out_dir=work, resume=args.resume, progress=True)
    log.info("head: best epoch %d, validation UAR %.3f, temperature %.2f", result.best_epoch, result.best_score,
             result.temperature)
    # embeddings of every clip (each with its speaker's leave-one-out enrolment baseline)
    probs, emb = predict_clips(FittedModel(labels, normalizer, [head], "head"), X, manifest, settings.normalization)
    export_embeddings(work / "embeddings.npz", emb, manifest, probs, labels)
    reducer_params, on_val = settings.reducer_kwargs(manifest.speakers[val])
    reducer = fit_reducer(emb[tr], manifest.labels[tr], X_align=emb[val] if on_val else None,
                          y_align=manifest.labels[val] if on_val else None, **reducer_params)
    points = reducer.transform(emb[val])
    val_metrics = {"val_uar": uar(manifest.labels[val][keep], np.asarray(labels)[probs[val][keep].argmax(1)]),
                   "val_best_epoch": result.best_epoch, "temperature": result.temperature,
                   **{f"val_ccc_{k}": v for k, v in anchor_agreement(points, manifest.labels[val], ANCHORS).items()}}
    metrics = {"validation": val_metrics}
    if args.evaluate:
        metrics["held_out"] = _evaluate_metrics(args, X, manifest, settings, X_aug)
    feature_spec = {"kind": "egemaps", "feature_set": settings.feature_set, "feature_dim": int(X.shape[1])}
    config_json = {**settings.__dict__, "augment": list(settings.augment), "hidden_dims": list(settings.hidden_dims),
                   "train": config.to_json(),
                   "val_speakers": sorted(set(manifest.speakers[val].tolist())),
                   "reducer": {k: v for k, v in reducer.get_params().items() if isinstance(v, (int, float, str, type(None)))}}
    prov = provenance(manifest, config_json, command=["python", "-m", "training", *sys.argv[1:]] if sys.argv else None,
                      extra={"skipped_files": len(manifest.skipped)})
    bundle = make_bundle(backbone_spec=feature_spec, labels=labels, head=head, normalizer=normalizer, reducer=reducer,
                         anchor_set="all", name=args.name or out.name, version=args.version, provenance=prov,
                         metrics=metrics)
    bundle.save(out)
    print(json.dumps({"bundle": str(out), "model_id": bundle.model_id, **val_metrics}, indent=1))
    if "held_out" in metrics:
        from training.experiments import format_summary

        print(format_summary(metrics["held_out"]["protocols"]))
    return 0


def _build_wavlm(args, manifest, settings, out: Path, work: Path) -> int:
    from monitor.model.wavlm import WavLMBackbone
    from training.augment import Augmentation
    from training.export import export_embeddings, fit_reducer, make_bundle, provenance
    from training.train import TrainConfig, frozen_features, train_wavlm

    if not args.source:
        raise SystemExit("--backbone wavlm needs --source (a hub id such as microsoft/wavlm-base-plus, or a local folder)")
    backbone = WavLMBackbone.from_pretrained(args.source, revision=args.revision, finetune=args.finetune)
    val = _val_mask(manifest, args.val_speakers)
    manifest = _mark_splits(manifest, val, work)
    labels = sorted(set(manifest.labels[~val].tolist()))
    val_items = [it for it, v in zip(manifest, val) if v and it.label in labels]
    train_items = [it for it, v in zip(manifest, val) if not v]
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, head_lr=settings.head_lr,
                         encoder_lr=args.encoder_lr, dropout=settings.dropout, weight_decay=settings.weight_decay,
                         label_smoothing=settings.label_smoothing, balance=settings.balance, seed=args.seed,
                         hidden_dims=tuple(settings.hidden_dims),
                         patience=args.patience, device=args.device, precision=args.precision, max_steps=args.max_steps,
                         max_seconds=args.max_seconds, num_workers=args.num_workers)
    aug = Augmentation.from_spec("+".join(settings.augment), seed=args.seed) if settings.augment else None
    backbone, head, normalizer, result = train_wavlm(backbone, train_items, val_items, labels, config,
                                                     normalization=settings.normalization, out_dir=work,
                                                     resume=args.resume, augmentation=aug)
    device = next(head.parameters()).device
    feats = frozen_features(backbone, [it.path for it in manifest], device, batch_size=config.batch_size)
    from training.train import predict_head

    head = head.cpu()
    emb, probs = predict_head(head, normalizer.apply(feats))
    export_embeddings(work / "embeddings.npz", emb, manifest, probs, labels)
    tr = ~val
    reducer = fit_reducer(emb[tr], manifest.labels[tr]) if len(set(manifest.labels[tr])) > 1 and tr.sum() > 21 else None
    spec = backbone.spec()
    spec["normalize_waveform"] = bool(backbone.normalize_waveform)
    encoder = None
    if args.finetune != "frozen" or args.embed_backbone or Path(args.source).is_dir():
        spec["source"] = "bundle:backbone"
        spec["origin"] = args.source if not Path(args.source).is_dir() else "local folder"
        encoder = backbone.encoder
    config_json = {**settings.__dict__, "augment": list(settings.augment), "train": config.to_json(),
                   "finetune": args.finetune}
    prov = provenance(manifest, config_json, command=["python", "-m", "training", *sys.argv[1:]])
    metrics = {"validation": {"val_uar": result.best_score, "val_best_epoch": result.best_epoch,
                              "temperature": result.temperature, "steps": result.steps}}
    bundle = make_bundle(backbone_spec=spec, labels=labels, head=head, normalizer=normalizer, reducer=reducer,
                         name=args.name or out.name, version=args.version, provenance=prov, metrics=metrics,
                         layer_logits=backbone.layer_logits, encoder=encoder)
    bundle.save(out)
    print(json.dumps({"bundle": str(out), "model_id": bundle.model_id, **metrics["validation"]}, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return {"build": cmd_build, "evaluate": cmd_evaluate, "manifest": cmd_manifest, "extract": cmd_extract}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
