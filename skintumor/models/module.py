"""The LightningModule: model + focal loss + optimiser/schedule + torchmetrics.

Everything it is built from is plain data (dicts, lists, numbers), saved as hyper-parameters, so a
checkpoint rebuilds the model without unpickling arbitrary objects (:func:`load_classifier`).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from skintumor.augment.mixing import mix_batch
from skintumor.errors import ConfigError, DataError
from skintumor.evaluate.metrics import stage_metrics, summarise
from skintumor.models.attention_resnet import AttentionGatedResNet18
from skintumor.models.decision import balanced_offsets
from skintumor.models.losses import (FocalLoss, gate_mask_loss, inverse_frequency_alpha, lesion_class_loss,
                                     lesion_mask_loss)

STAGES = ("train", "val", "test")
TTA = (None, "hflip")
DECISIONS = ("argmax", "balanced")


class SkinTumorClassifier(L.LightningModule):
    """Args (all plain data):
        classes: class names, logit order. image_size, mean, std: the input contract, kept for predict.
        net: keyword arguments of :class:`AttentionGatedResNet18` (num_classes is set from classes).
        loss: ``gamma``, ``alpha`` ("auto" = inverse class frequency of ``class_counts``, null, or a
            list), ``label_smoothing``, ``aux_weight`` (deep supervision), ``mask_weight`` (> 0: the
            gates also learn the lesion masks of the training images that have one, see
            :func:`~skintumor.models.losses.gate_mask_loss`), ``empty_mask`` (``skip``: an empty mask
            adds nothing; ``background``: it means "no lesion" and the sigmoid gates learn to stay off),
            ``lesion_weight`` (weight of the lesion decoder's loss,
            :func:`~skintumor.models.losses.lesion_mask_loss`; needs ``net.lesion_decoder``),
            ``lesion_class_weight`` (weight of the decoder's per-cell class loss,
            :func:`~skintumor.models.losses.lesion_class_loss`; needs ``net.lesion_decoder_classes``).
        optimizer: ``name`` (adam | adamw | sgd), ``lr``, ``weight_decay``, ``momentum`` (sgd).
        scheduler: ``name`` (step | cosine | onecycle | none), ``step_size``, ``gamma`` (step),
            ``warmup_epochs`` (cosine), ``min_lr`` (cosine).
        class_counts: training images per class, for alpha "auto".
        channels_last: NHWC memory format (faster on CPU with oneDNN and on tensor-core GPUs).
        ema_decay: None, or the decay of an exponential moving average of the weights (e.g. 0.999),
            updated after every training batch (one optimiser step). Validation and test evaluate
            the averaged model directly (``self.ema.module``); no weights are swapped, so training
            never sees them. The checkpoint holds both (``model.*`` raw, ``ema.module.*``
            averaged), so best.ckpt holds the EMA weights that were validated, and
            :func:`load_classifier` returns them. BatchNorm statistics are averaged too.
        tta: None, or "hflip": at validation and test, probabilities are the mean of the softmax of
            the image and of its horizontal (left-right) mirror. The loss uses the image alone.
        decision: "argmax", or "balanced": after training, class offsets on the log-probabilities
            are chosen on the inner validation split to maximise its balanced accuracy
            (:meth:`choose_decision_offsets`, :mod:`skintumor.models.decision`). They live in the
            ``decision_offsets`` buffer (zeros = plain argmax), so the checkpoint carries them and
            every later prediction (test, :meth:`predict_proba`, ``skintumor.explain``) uses them.
            They move the decision, not the ranking: test AUROC is computed on the probabilities
            before the offsets (:meth:`score_proba`), which the test-prediction file keeps as
            ``score_<class>`` columns beside the decided ``p_<class>``.
        mixing: ``mixup_alpha``, ``cutmix_alpha`` (0 = off): training batches are mixed
            (:func:`~skintumor.augment.mixing.mix_batch`, lesion masks mixed alike) and the loss is
            the mix of the two labels' losses. Validation and test see plain images.
    """

    def __init__(self, classes: list[str], net: dict | None = None, loss: dict | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None,
                 class_counts: list[int] | None = None, image_size: int = 224,
                 mean: float = 0.449, std: float = 0.226, channels_last: bool = True,
                 ema_decay: float | None = None, tta: str | None = None, decision: str = "argmax",
                 mixing: dict | None = None):
        super().__init__()
        if decision not in DECISIONS:
            raise ConfigError(f"model.decision must be one of {DECISIONS}, got {decision!r}")
        if tta not in TTA:
            raise ConfigError(f"model.tta must be one of {TTA}, got {tta!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be null or in (0, 1), got {ema_decay!r}")
        loss = dict(gamma=2.0, alpha="auto", label_smoothing=0.0, aux_weight=0.4, mask_weight=0.0,
                    empty_mask="skip", lesion_weight=1.0, lesion_class_weight=1.0) | dict(loss or {})
        if loss["alpha"] == "auto":
            if class_counts is None:
                raise ValueError("loss.alpha='auto' needs the training fold's class_counts")
            loss["alpha"] = inverse_frequency_alpha(class_counts)
        net = dict(net or {}) | {"num_classes": len(classes)}
        mixing = dict(mixup_alpha=0.0, cutmix_alpha=0.0) | dict(mixing or {})
        if set(mixing) != {"mixup_alpha", "cutmix_alpha"} or min(mixing.values()) < 0:
            raise ConfigError(f"model.mixing takes mixup_alpha and cutmix_alpha (>= 0, 0 = off), got {mixing}")
        self.save_hyperparameters(dict(classes=list(classes), net=net, loss=loss,
                                       optimizer=dict(name="adam", lr=1e-4, weight_decay=0.0) | dict(optimizer or {}),
                                       scheduler=dict(name="step", step_size=7, gamma=0.1) | dict(scheduler or {}),
                                       class_counts=class_counts, image_size=image_size, mean=mean, std=std,
                                       channels_last=channels_last, ema_decay=ema_decay, tta=tta,
                                       decision=decision, mixing=mixing))
        self.classes = list(classes)
        self.model = AttentionGatedResNet18(**net)
        self.register_buffer("decision_offsets", torch.zeros(len(classes)))  # added to log-probabilities
        self.criterion = FocalLoss(loss["gamma"], loss["alpha"], loss["label_smoothing"])
        self.aux_weight = float(loss["aux_weight"])
        self.mask_weight = float(loss["mask_weight"])
        if self.mask_weight < 0:
            raise ConfigError(f"loss.mask_weight must be >= 0, got {self.mask_weight}")
        if self.mask_weight > 0 and not net.get("attention", True):
            # `experiment=recipe model=resnet18` is the gates-off baseline of the same recipe
            warnings.warn("loss.mask_weight is ignored: plain ResNet18 has no gates to point at lesions", stacklevel=2)
            self.mask_weight = 0.0
        self.lesion_weight = float(loss["lesion_weight"])
        if self.lesion_weight < 0:
            raise ConfigError(f"loss.lesion_weight must be >= 0, got {self.lesion_weight}")
        self.lesion_class_weight = float(loss["lesion_class_weight"])
        if self.lesion_class_weight < 0:
            raise ConfigError(f"loss.lesion_class_weight must be >= 0, got {self.lesion_class_weight}")
        # the decoder runs in training only where one of its losses counts (it never decides)
        self.decoder_trains = self.lesion_weight > 0 or (
            self.lesion_class_weight > 0 and bool(net.get("lesion_decoder_classes", False)))
        if self.model.lesion_zoom and not self.decoder_trains:
            raise ConfigError("net.lesion_zoom needs a decoder that learns where the lesion is: set loss.lesion_weight > 0")
        if loss["empty_mask"] not in ("skip", "background"):
            raise ConfigError(f"loss.empty_mask must be 'skip' or 'background', got {loss['empty_mask']!r}")
        if loss["empty_mask"] == "background" and net.get("normalization", "sigmoid") == "softmax":
            raise ConfigError("loss.empty_mask=background needs sigmoid gates (a softmax gate always sums to 1)")
        self.metrics = nn.ModuleDict({f"{s}_metrics": stage_metrics(len(classes)) for s in STAGES})  # "train" would shadow .train()
        # (rows, probabilities with offsets, probabilities before them)
        self.test_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._test_buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema: AveragedModel | None = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)  # never optimised (and DDP ignores it)

    def eval_model(self) -> AttentionGatedResNet18:
        """The network validation and test use: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised images -> logits (B, C)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def score_proba(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> the network's probabilities (B, C) (EMA, TTA), before any class offsets.

        ``logits``: the evaluated network's logits of ``x`` when already computed.
        """
        net = self.eval_model()
        if logits is None:
            logits = net(x)
        probs = torch.softmax(logits.float(), dim=1)
        if self.hparams.tta == "hflip":
            mirrored = net(torch.flip(x, dims=[-1]))  # width axis
            probs = (probs + torch.softmax(mirrored.float(), dim=1)) / 2
        return probs

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, C) probabilities -> (B, C) with the class offsets added to their logarithms (argmax = decision)."""
        if not self.decision_offsets.any():
            return probs
        return torch.softmax(probs.clamp(min=1e-12).log() + self.decision_offsets, dim=1)

    def predict_proba(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> probabilities (B, C) as validation and test decide with them (EMA, TTA, offsets)."""
        return self.decide(self.score_proba(x, logits))

    @torch.no_grad()
    def predict_loader(self, loader, decide: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) and :meth:`predict_proba` probabilities (N, C) of a loader of ``(x, y, ...)``
        items, in eval mode (the module's mode is restored afterwards); ``decide=False``: the
        :meth:`score_proba` probabilities, before the class offsets."""
        was_training, device = self.training, self.decision_offsets.device
        self.eval()
        ys, ps = [], []
        for x, y, *_ in loader:
            x = x.to(device)
            if self.hparams.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ps.append((self.predict_proba(x) if decide else self.score_proba(x)).cpu().numpy())
            ys.append(y.numpy())
        self.train(was_training)
        return np.concatenate(ys), np.concatenate(ps)

    def choose_decision_offsets(self, loader) -> np.ndarray:
        """Set ``decision_offsets`` to the ones that maximise balanced accuracy on ``loader``
        (the inner validation split) and return them, (C,). Plain argmax is the starting point."""
        self.decision_offsets.zero_()
        offsets = balanced_offsets(*self.predict_loader(loader))
        self.decision_offsets.copy_(torch.as_tensor(offsets, dtype=self.decision_offsets.dtype))
        return offsets

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints written before `decision` existed have no offsets: plain argmax
        checkpoint["state_dict"].setdefault("decision_offsets", torch.zeros(len(self.classes)))

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> loss, probabilities (with the class offsets outside training) and scores (without)."""
        x, y, rows = batch[:3]
        masks = batch[3] if len(batch) > 3 else None
        mix = None
        if stage == "train" and any(self.hparams.mixing.values()):
            mix = mix_batch(x, y, masks, **self.hparams.mixing)
            x, masks = mix.x, mix.masks
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stage == "train" and masks is None and self.model.lesion_zoom:
            warnings.warn("net.lesion_zoom: the training data has no lesion masks, so the decoder learns nothing "
                          "and the zoom looks at arbitrary crops; use data with masks or lesion_zoom=0", stacklevel=2)
        net = self.model if stage == "train" else self.eval_model()
        out = net.forward_details(x, lesion=stage == "train" and masks is not None and self.decoder_trains)

        def over_labels(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            """``loss_of`` the batch's labels; for a mixed batch, the mix of its two labels' losses."""
            if mix is None:
                return loss_of(y)
            return mix.lam * loss_of(mix.y_a) + (1 - mix.lam) * loss_of(mix.y_b)

        def criterion(logits: torch.Tensor) -> torch.Tensor:
            return over_labels(lambda labels: self.criterion(logits, labels))

        loss = criterion(out.logits)
        if stage == "train" and self.model.aggregation == "deep_sup" and out.branch_logits:
            aux = torch.stack([criterion(b) for b in out.branch_logits]).mean()
            loss = loss + self.aux_weight * aux
        if stage == "train" and self.mask_weight > 0 and masks is not None:
            # the gates learn to point at the lesion where the data has a lesion mask
            norm = self.hparams.net.get("normalization", "sigmoid")
            background = self.hparams.loss["empty_mask"] == "background"
            mask_loss = torch.stack([gate_mask_loss(a, masks, norm, background)
                                     for a in out.attention.values()]).mean()
            self.log("train/mask_loss", mask_loss, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.mask_weight * mask_loss
        if out.lesion_logits is not None:
            # multi-task: the trunk also outlines the lesion (dense supervision)
            lesion_loss = lesion_mask_loss(out.lesion_logits, masks)
            self.log("train/lesion_loss", lesion_loss, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.lesion_weight * lesion_loss
        if out.lesion_class_logits is not None and self.lesion_class_weight > 0:
            # the lesion's own cells must tell the image's class
            class_loss = over_labels(lambda labels: lesion_class_loss(out.lesion_class_logits, masks, labels))
            self.log("train/lesion_class_loss", class_loss, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.lesion_class_weight * class_loss
        scores = torch.softmax(out.logits.float(), dim=1) if stage == "train" else self.score_proba(x, out.logits)
        probs = scores if stage == "train" else self.decide(scores)
        if stage == "val":
            for name, alpha in out.attention.items():  # does the gate vary within an image?
                values = alpha.float().flatten(1)
                spread = values.std(dim=1)
                # std / mean: scale-free, so sigmoid gates and softmax gates (which sum to 1) compare
                cv = spread / values.mean(dim=1).clamp(min=1e-12)
                self.log(f"val/{name}_spread", spread.mean(), on_step=False, on_epoch=True, batch_size=len(y),
                         sync_dist=True)
                self.log(f"val/{name}_cv", cv.mean(), on_step=False, on_epoch=True, batch_size=len(y),
                         sync_dist=True)
        if stage == "val" and out.zoom_boxes is not None:  # how far the zoom magnifies (1 = the whole image)
            self.log("val/zoom_side", out.zoom_boxes[:, 2].mean(), on_step=False, on_epoch=True, batch_size=len(y),
                     sync_dist=True)
        if mix is not None and mix.lam < 0.5:  # training metrics count the larger part's label
            y = mix.y_b
        metrics = self.metrics[f"{stage}_metrics"]
        metrics["stats"].update(probs, y)    # the decision
        metrics["auroc"].update(scores, y)   # the ranking: offsets are a threshold, not a score
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=False, on_epoch=True,
                 batch_size=len(y), sync_dist=True)
        return loss, probs, scores

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        _, probs, scores = self._step(batch, "test")
        self._test_buffer.append((batch[2].detach(), probs.detach(), scores.detach()))

    def _log_epoch(self, stage: str) -> None:
        collection = self.metrics[f"{stage}_metrics"]
        if self.trainer.sanity_checking:  # sanity batches must not leak into the first epoch's numbers
            collection.reset()
            return
        values = summarise(collection.compute(), self.classes)
        collection.reset()
        shown = {"auroc_macro", "bal_acc"} if stage == "val" else set()
        for key, value in values.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in shown, sync_dist=True)

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_start(self):
        self._test_buffer = []

    def on_test_epoch_end(self):
        self._log_epoch("test")
        rows, probs, scores = (self.all_gather(torch.cat(part)) for part in zip(*self._test_buffer))  # DDP: every rank's share
        rows = rows.reshape(-1).cpu().numpy()
        probs, scores = (t.reshape(-1, len(self.classes)).float().cpu().numpy() for t in (probs, scores))
        rows, first = np.unique(rows, return_index=True)  # DistributedSampler pads with repeats
        self.test_predictions = (rows, probs[first], scores[first])

    def configure_optimizers(self):
        opt_cfg, sch_cfg = dict(self.hparams.optimizer), dict(self.hparams.scheduler)
        optimizer = build_optimizer(self.model.parameters(), **opt_cfg)  # never the EMA copy
        scheduler = build_scheduler(optimizer, max_epochs=self.trainer.max_epochs,
                                    total_steps=self.trainer.estimated_stepping_batches, **sch_cfg)
        if scheduler is None:
            return optimizer
        interval = "step" if sch_cfg["name"] == "onecycle" else "epoch"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def build_optimizer(params, name: str = "adam", lr: float = 1e-4, weight_decay: float = 0.0,
                    momentum: float = 0.9, **_) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
    raise ConfigError(f"unknown optimizer {name!r} (adam, adamw, sgd)")


def build_scheduler(optimizer, name: str = "step", max_epochs: int = 30, total_steps: int | float = 0,
                    step_size: int = 7, gamma: float = 0.1, warmup_epochs: int = 0, min_lr: float = 0.0,
                    **_):
    """step: StepLR (the study's). cosine: linear warm-up then cosine to ``min_lr``. onecycle: per step."""
    if name in ("none", None):
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        floor = min_lr / base if base else 0.0

        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / (warmup_epochs + 1)
            progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "onecycle":
        max_lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=int(total_steps))
    raise ConfigError(f"unknown scheduler {name!r} (step, cosine, onecycle, none)")


def load_classifier(checkpoint: str | Path, map_location: str = "cpu") -> SkinTumorClassifier:
    """Rebuild a trained classifier from a checkpoint; reads tensors and plain data only.

    With EMA (``ema_decay`` set) ``.model`` gets the averaged weights, the ones that were validated.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint not found")
    try:
        data = torch.load(checkpoint, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or one that needs unpickling arbitrary objects
        raise DataError(f"{checkpoint}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or "state_dict" not in data or "classes" not in data.get("hyper_parameters", {}):
        raise DataError(f"{checkpoint}: not a skintumor checkpoint (no weights, or no hyper-parameters with class names)")
    hp = dict(data["hyper_parameters"])
    hp["net"] = dict(hp["net"]) | {"pretrained": False, "weights_path": None}  # weights come from the file
    module = SkinTumorClassifier(**hp)
    module.on_load_checkpoint(data)
    module.load_state_dict(data["state_dict"])
    if module.ema is not None:
        module.model.load_state_dict(module.ema.module.state_dict())
    return module.eval()
