"""Stage I training: the emotion head on backbone features, or WavLM end to end.

Two paths share one loop (:class:`Trainer`):

- **features** (``egemaps``; or a frozen backbone whose features were cached):
  the head ``Linear(d -> 100) -> Linear(100 -> C)`` trains on precomputed,
  normalised feature vectors.
- **wavlm** (end to end): waveforms -> ``WavLMBackbone.forward_padded``
  (learnable softmax layer weights; frozen encoder or a fine-tuned
  transformer with the CNN frozen) -> fixed population normalisation -> head.

Both use cross-entropy on the logits (not on softmax outputs), shuffled
class- (and corpus-) balanced batches, separate learning rates for the encoder
(1e-5) and the head (1e-4 for wavlm) with linear warm-up and decay, validation
every epoch with early stopping keeping the best state, seeds, AMP on CUDA,
resumable checkpoints (``checkpoint.pt``, loaded with ``weights_only=True``),
tqdm progress and a JSON-lines metrics log.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from calibration.metrics import uar
from monitor.audio.io import read_audio
from training.sampling import BalancedSampler, sample_weights

if TYPE_CHECKING:
    from calibration.speaker import FeatureNormalizer
    from monitor.model.head import EmotionHead
    from monitor.model.wavlm import WavLMBackbone
    from training.corpora import Item

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
#: ``batches(epoch)`` yields ``(inputs, targets)``: one epoch of training batches.
Batches = Callable[[int], Iterable[tuple[Any, torch.Tensor]]]
#: ``evaluate()`` -> ``(logits [n, C], targets [n])`` on the validation set.
Evaluate = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in the bundle's provenance)."""

    epochs: int = 60
    batch_size: int = 32
    head_lr: float = 1e-4
    encoder_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup: float = 0.05  # share of all steps spent warming up, then linear decay to 0
    embedding_dim: int = 100
    hidden_dims: tuple[int, ...] = ()  # MLP encoder widths before the bottleneck (EmotionHead.hidden_dims)
    dropout: float = 0.0
    label_smoothing: float = 0.0
    feature_noise: float = 0.0  # std of Gaussian noise added to normalised features (features path)
    mixup: float = 0.0  # features path: Beta(a, a) mixup of normalised features and one-hot targets (0 = off)
    balance: str = "corpus+class"
    patience: int = 10
    min_epochs: int = 1
    select: str = "uar"  # the validation score that early stopping keeps the best epoch by: "uar" or "loss"
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); validated and kept instead
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA, fp32 on CPU
    grad_clip: float = 5.0
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)
    calibrate_temperature: bool = True
    num_workers: int = 0
    max_seconds: float = 8.0  # random crop of training waveforms (wavlm path)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(round(total_steps * warmup)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]]
    temperature: float = 1.0
    steps: int = 0
    resumed_from: int | None = None


class Trainer:
    """The shared loop.

    ``model(inputs) -> (embedding, logits)``; ``batches(epoch)`` yields
    ``(inputs, targets)`` for one epoch (inputs already on the device or moved
    by ``to_device``); ``evaluate()`` returns ``(logits [n, C] tensor, targets
    [n] long tensor)`` on the validation set.
    """

    def __init__(self, model: nn.Module, param_groups: list[dict[str, Any]], config: TrainConfig,
                 device: torch.device, steps_per_epoch: int, out_dir: str | Path | None = None,
                 sampler: BalancedSampler | None = None):
        from monitor.model.emotion import autocast_dtype

        self.model = model
        self.config = config
        self.device = device
        self.out_dir = Path(out_dir) if out_dir else None
        self.sampler = sampler
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
        total = max(1, steps_per_epoch * config.epochs)
        if config.max_steps:
            total = min(total, config.max_steps)
        self.total_steps = total
        self.scheduler = linear_schedule(self.optimizer, total, config.warmup)
        self.amp_dtype = autocast_dtype(device, config.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.epoch = 0
        self.step = 0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.ema_state: dict[str, torch.Tensor] | None = None

    # ---- checkpoints ----------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def save_checkpoint(self) -> None:
        if not self.out_dir:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self._trainable_state(),
            "best_model": self.best_state or {},
            "ema_model": self.ema_state or {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state() if self.sampler else torch.zeros(0, dtype=torch.uint8),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "best_score": float(self.best_score),
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
            "config": json.dumps(self.config.to_json()),
        }
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out_dir / CHECKPOINT)

    def load_checkpoint(self, path: str | Path) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.sampler is not None and state["sampler"].numel():
            self.sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state["best_model"] or None
        ema = state.get("ema_model")
        self.ema_state = {k: v.to(self.device) for k, v in ema.items()} if ema else None
        self.history = json.loads(state["history"])
        return self.epoch

    def _stopped_early(self) -> bool:
        return self.bad_epochs >= self.config.patience and self.epoch >= self.config.min_epochs

    # ---- weight averaging --------------------------------------------------------------
    def _update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, after every optimiser step (buffers are copied)."""
        decay = self.config.ema
        with torch.no_grad():
            current = self.model.state_dict()
            if self.ema_state is None:
                self.ema_state = {k: v.detach().clone() for k, v in current.items()}
                return
            for k, v in current.items():
                if v.dtype.is_floating_point:
                    self.ema_state[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
                else:
                    self.ema_state[k].copy_(v)

    def _validate_ema(self, evaluate: Evaluate) -> dict[str, float]:
        """Validate with the averaged weights, then put the raw weights back."""
        assert self.ema_state is not None
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema_state)
        try:
            return self.validate(evaluate)
        finally:
            self.model.load_state_dict(raw)

    # ---- the loop --------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def validate(self, evaluate: Evaluate) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            logits, targets = evaluate()
        logits = logits.float()
        loss = float(nn.functional.cross_entropy(logits, targets).item()) if len(targets) else float("nan")
        pred = logits.argmax(dim=1).cpu().numpy()
        score = uar(targets.cpu().numpy(), pred) if len(targets) else float("nan")
        return {"val_loss": loss, "val_uar": score}

    def _train_step(self, inputs: Any, targets: torch.Tensor) -> float:
        """One optimiser step on a batch; returns its loss."""
        cfg = self.config
        targets = targets.to(self.device)
        with self._autocast():
            _, logits = self.model(inputs)
            loss = self.loss_fn(logits.float(), targets)  # cross-entropy on the logits
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(loss))
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not self.scaler.is_enabled() or self.scaler.get_scale() >= scale:
            self.scheduler.step()  # fp16: a step skipped for inf/NaN gradients does not advance the schedule
        self.step += 1
        if cfg.ema > 0:
            self._update_ema()
        return float(loss.item())

    def _train_epoch(self, batches: Batches, progress: bool) -> list[float]:
        """The batches of one epoch (stopping at ``max_steps``); returns their losses."""
        from tqdm.auto import tqdm

        cfg = self.config
        self.model.train()
        losses: list[float] = []
        bar = tqdm(batches(self.epoch), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for inputs, targets in bar:
            losses.append(self._train_step(inputs, targets))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if cfg.max_steps and self.step >= cfg.max_steps:
                break
        return losses

    def _end_epoch(self, losses: list[float], seconds: float, evaluate: Evaluate | None) -> dict[str, Any]:
        """Validate, keep the best state, count epochs without improvement; returns the epoch's metrics record."""
        cfg = self.config
        self.epoch += 1
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                  "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                  "lr_head": self.optimizer.param_groups[-1]["lr"], "seconds": round(seconds, 3)}
        averaged = cfg.ema > 0 and bool(self.ema_state)
        if evaluate is not None:
            record.update(self._validate_ema(evaluate) if averaged else self.validate(evaluate))
            score = -record["val_loss"] if cfg.select == "loss" else record["val_uar"]
        else:
            score = -record["train_loss"]
        improved = score > self.best_score + 1e-6
        if improved or self.best_state is None:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.ema_state.items()} \
                if averaged and self.ema_state else self._trainable_state()
        else:
            self.bad_epochs += 1
        record["best_epoch"] = self.best_epoch
        self.history.append(record)
        return record

    def _running(self) -> bool:
        cfg = self.config
        return self.epoch < cfg.epochs and not (cfg.max_steps and self.step >= cfg.max_steps) \
            and not self._stopped_early()  # a resumed run that had already stopped stays stopped

    def fit(self, batches: Batches, evaluate: Evaluate | None, resume: bool = False,
            progress: bool = True) -> TrainResult:
        resumed_from = None
        if resume and self.out_dir and (self.out_dir / CHECKPOINT).is_file():
            resumed_from = self.load_checkpoint(self.out_dir / CHECKPOINT)
            log.info("resumed from %s at epoch %d", self.out_dir / CHECKPOINT, resumed_from)
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if resumed_from is None and (self.out_dir / METRICS_LOG).exists():
                (self.out_dir / METRICS_LOG).unlink()  # a fresh run starts a fresh log
        log_file = open(self.out_dir / METRICS_LOG, "a") if self.out_dir else None
        try:
            while self._running():
                t0 = time.time()
                losses = self._train_epoch(batches, progress)
                record = self._end_epoch(losses, time.time() - t0, evaluate)
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                self.save_checkpoint()
                if self._stopped_early():
                    log.info("early stop at epoch %d (best %d: %.4f)", self.epoch, self.best_epoch, self.best_score)
                    break
        finally:
            if log_file:
                log_file.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return TrainResult(self.best_epoch, float(self.best_score), self.history, steps=self.step,
                           resumed_from=resumed_from)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of softmax(logits / T)."""
    if len(targets) == 0:
        return 1.0
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), targets)
        torch.autograd.backward(loss)
        return loss

    step: Callable[[Callable[[], torch.Tensor]], object] = opt.step  # LBFGS.step carries no annotations
    step(closure)
    t = float(log_t.exp().item())
    return t if math.isfinite(t) and 0.05 < t < 20 else 1.0


# ---------------------------------------------------------------------------------------
# features path


class _HeadOnly(nn.Module):
    def __init__(self, head: nn.Module, feature_noise: float = 0.0):
        super().__init__()
        self.head = head
        self.feature_noise = feature_noise

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.feature_noise > 0:
            x = x + self.feature_noise * torch.randn_like(x)
        emb, logits = self.head(x)
        return emb, logits


def train_head(X_train: np.ndarray, y_train: np.ndarray, labels: Sequence[str], config: TrainConfig,
               X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, corpora: Iterable[str] | None = None,
               out_dir: str | Path | None = None, resume: bool = False,
               progress: bool = False) -> tuple[EmotionHead, TrainResult]:
    """Train an ``EmotionHead`` on normalised features. ``y_*`` are class indices into ``labels``.

    Returns ``(head, TrainResult)``; the head is on the CPU in eval mode with its
    temperature fitted on the validation set when ``config.calibrate_temperature``.
    """
    from monitor.model.head import EmotionHead
    from monitor.model.emotion import choose_device

    seed_everything(config.seed)
    device = choose_device(config.device)
    head = EmotionHead(X_train.shape[1], len(labels), embedding_dim=config.embedding_dim, dropout=config.dropout,
                       hidden_dims=config.hidden_dims)
    model = _HeadOnly(head, config.feature_noise).to(device)
    Xt = torch.as_tensor(np.asarray(X_train, dtype=np.float32), device=device)
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=device)
    weights = sample_weights([labels[i] for i in y_train], corpora, config.balance if corpora is not None else
                             ("class" if config.balance != "none" else "none"))
    sampler = BalancedSampler(weights, seed=config.seed)
    steps = math.ceil(len(sampler) / config.batch_size)

    n_classes = len(labels)
    beta = torch.distributions.Beta(config.mixup, config.mixup) if config.mixup > 0 else None

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(list(iter(sampler)), device=device)
        for i in range(0, len(idx), config.batch_size):
            b = idx[i:i + config.batch_size]
            if beta is None:
                yield Xt[b], yt[b]
                continue
            # mixup (Zhang et al. 2018): convex pairs of inputs and of one-hot targets; the loss takes soft targets
            lam = beta.sample((len(b), 1)).to(device)
            lam = torch.maximum(lam, 1.0 - lam)  # the first clip dominates its mix
            perm = torch.randperm(len(b), device=device)
            onehot = nn.functional.one_hot(yt[b], n_classes).float()
            yield lam * Xt[b] + (1.0 - lam) * Xt[b][perm], lam * onehot + (1.0 - lam) * onehot[perm]

    evaluate: Evaluate | None = None
    if X_val is not None and len(X_val):
        Xv = torch.as_tensor(np.asarray(X_val, dtype=np.float32), device=device)
        yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64), device=device)

        def evaluate_head() -> tuple[torch.Tensor, torch.Tensor]:
            return model(Xv)[1], yv

        evaluate = evaluate_head

    trainer = Trainer(model, [{"params": list(model.parameters()), "lr": config.head_lr}], config, device, steps,
                      out_dir=out_dir, sampler=sampler)
    result = trainer.fit(batches, evaluate, resume=resume, progress=progress)
    model.eval()
    if config.calibrate_temperature and evaluate is not None:
        with torch.no_grad():
            logits, targets = evaluate()
        result.temperature = fit_temperature(logits, targets)
        head.temperature.fill_(result.temperature)
    return head.cpu().eval(), result


def predict_head(head: EmotionHead, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, calibrated probabilities) of a head on normalised features."""
    with torch.no_grad():
        emb, logits = head(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        probs = head.probabilities(logits)
    return emb.numpy(), probs.numpy()


# ---------------------------------------------------------------------------------------
# end-to-end wavlm path


#: ``augmentation(wave, key) -> wave`` (``training.augment.Augmentation``).
WaveAugmentation = Callable[[np.ndarray, str], np.ndarray]


class WaveDataset(torch.utils.data.Dataset[tuple[np.ndarray, int]]):
    """Waveforms of manifest items, loaded lazily (16 kHz mono), optionally cropped and augmented."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], keys: Sequence[str] | None = None,
                 max_seconds: float | None = None, augmentation: WaveAugmentation | None = None, train: bool = True,
                 seed: int = 0):
        self.paths = list(paths)
        self.targets = list(targets)
        self.keys = list(keys) if keys is not None else self.paths
        self.max_len = int(max_seconds * 16000) if max_seconds else None
        self.augmentation = augmentation
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        wave = read_audio(self.paths[i])
        if self.train and self.augmentation is not None:
            wave = self.augmentation(wave, f"{self.keys[i]}#{self.epoch}")
        if self.max_len and len(wave) > self.max_len:
            if self.train:
                rng = np.random.default_rng(hash((self.seed, self.epoch, i)) % (2 ** 32))
                start = int(rng.integers(0, len(wave) - self.max_len + 1))
            else:
                start = (len(wave) - self.max_len) // 2
            wave = wave[start:start + self.max_len]
        return wave, self.targets[i]


class WaveModel(nn.Module):
    """backbone.forward_padded -> fixed affine normalisation -> head."""

    mean: torch.Tensor  # buffers
    scale: torch.Tensor

    def __init__(self, backbone: WavLMBackbone, head: EmotionHead, mean: np.ndarray | None = None,
                 scale: np.ndarray | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        dim = backbone.feature_dim
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(dim), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale if scale is not None else np.ones(dim),
                                                      dtype=torch.float32))

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        values, lengths = inputs
        feats = self.backbone.forward_padded(values, lengths)
        emb, logits = self.head((feats.float() - self.mean) / self.scale)
        return emb, logits


#: A padded batch of waveforms and its targets: ``((values, lengths), targets)``.
WaveBatch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def _collate(backbone: WavLMBackbone) -> Callable[[Sequence[tuple[np.ndarray, int]]], WaveBatch]:
    def collate(batch: Sequence[tuple[np.ndarray, int]]) -> WaveBatch:
        waves, targets = zip(*batch, strict=True)
        values, lengths = backbone.prepare(list(waves))
        return (values, lengths), torch.as_tensor(targets, dtype=torch.long)

    return collate


def frozen_features(backbone: WavLMBackbone, paths: Sequence[str], device: torch.device, batch_size: int = 8,
                    max_seconds: float | None = None, progress: bool = False) -> np.ndarray:
    """Pooled features of files with the backbone as it is now (no gradients)."""
    from tqdm.auto import tqdm

    ds = WaveDataset(paths, [0] * len(paths), max_seconds=max_seconds, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=_collate(backbone))
    out = []
    backbone.eval()
    with torch.no_grad():
        for (values, lengths), _ in tqdm(loader, desc="backbone features", disable=not progress, leave=False):
            out.append(backbone.forward_padded(values.to(device), lengths.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.feature_dim), np.float32)


def train_wavlm(backbone: WavLMBackbone, train_items: Iterable[Item], val_items: Iterable[Item] | None,
                labels: Sequence[str], config: TrainConfig, normalization: str = "population",
                out_dir: str | Path | None = None, resume: bool = False,
                augmentation: WaveAugmentation | None = None,
                progress: bool = True) -> tuple[WavLMBackbone, EmotionHead, FeatureNormalizer, TrainResult]:
    """Train backbone layer weights (+ transformer when fine-tuning) and head end to end.

    ``train_items`` / ``val_items`` are manifests (or lists of ``Item``).
    ``normalization``: "none" or "population" (statistics from the initial
    backbone's features of the training clips, then fixed: the same affine
    map is stored in the bundle and applied at run time). Returns
    ``(backbone, head, normalizer, TrainResult)``.
    """
    from calibration.speaker import FeatureNormalizer
    from monitor.model.head import EmotionHead
    from monitor.model.emotion import choose_device

    if normalization not in ("none", "population"):
        raise ValueError("the end-to-end wavlm path supports normalization 'none' or 'population' "
                         "(enrolment shifts are defined on fixed features: use a frozen backbone's cached features)")
    seed_everything(config.seed)
    device = choose_device(config.device)
    backbone = backbone.to(device)
    index = {c: i for i, c in enumerate(labels)}
    train_items, val_items = list(train_items), list(val_items or [])
    y_train = [index[it.label] for it in train_items]
    normalizer = FeatureNormalizer(normalization)
    mean = scale = None
    if normalization == "population":
        feats = frozen_features(backbone, [it.path for it in train_items], device, max_seconds=config.max_seconds,
                                progress=progress)
        normalizer.fit(feats, [it.label for it in train_items])
        mean, scale = normalizer.mean_, normalizer.scale_
    head = EmotionHead(backbone.feature_dim, len(labels), embedding_dim=config.embedding_dim, dropout=config.dropout,
                       hidden_dims=config.hidden_dims)
    model = WaveModel(backbone, head, mean, scale).to(device)

    weights = sample_weights([it.label for it in train_items], [it.corpus for it in train_items], config.balance)
    sampler = BalancedSampler(weights, seed=config.seed)
    train_ds = WaveDataset([it.path for it in train_items], y_train, [it.key for it in train_items],
                           max_seconds=config.max_seconds, augmentation=augmentation, train=True, seed=config.seed)
    collate = _collate(backbone)
    steps = math.ceil(len(sampler) / config.batch_size)

    def batches(epoch: int) -> Iterator[WaveBatch]:
        train_ds.epoch = epoch
        loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                                             collate_fn=collate, num_workers=config.num_workers)
        for (values, lengths), targets in loader:
            yield (values.to(device), lengths.to(device)), targets

    evaluate: Evaluate | None = None
    if val_items:
        val_ds = WaveDataset([it.path for it in val_items], [index[it.label] for it in val_items],
                             max_seconds=None, train=False)

        def evaluate_waves() -> tuple[torch.Tensor, torch.Tensor]:
            loader = torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size, shuffle=False,
                                                 collate_fn=collate)
            logits, targets = [], []
            for (values, lengths), t in loader:
                logits.append(model((values.to(device), lengths.to(device)))[1].float())
                targets.append(t.to(device))
            return torch.cat(logits), torch.cat(targets)

        evaluate = evaluate_waves

    encoder_params = [p for n, p in backbone.named_parameters() if p.requires_grad and n != "layer_logits"]
    groups = [{"params": [backbone.layer_logits] + list(head.parameters()), "lr": config.head_lr}]
    if encoder_params:
        groups.insert(0, {"params": encoder_params, "lr": config.encoder_lr})
    trainer = Trainer(model, groups, config, device, steps, out_dir=out_dir, sampler=sampler)
    result = trainer.fit(batches, evaluate, resume=resume, progress=progress)
    model.eval()
    if config.calibrate_temperature and evaluate is not None:
        with torch.no_grad(), trainer._autocast():
            logits, targets = evaluate()
        result.temperature = fit_temperature(logits.float(), targets)
        head.temperature.fill_(result.temperature)
    return backbone, head, normalizer, result
