"""The LightningModule: model + focal loss + optimiser/schedule + torchmetrics.

Everything it is built from is plain data (dicts, lists, numbers), saved as hyper-parameters, so a
checkpoint rebuilds the model without unpickling arbitrary objects
(:func:`skintumor.models.checkpoint.load_classifier`).
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from skintumor.errors import ConfigError
from skintumor.models.attention_resnet import AttentionGatedResNet18, ModelOutput
from skintumor.models.decision import balanced_offsets
from skintumor.models.losses import FocalLoss, gate_mask_loss, inverse_frequency_alpha, lesion_mask_loss
from skintumor.models.metrics import stage_metrics, summarise
from skintumor.models.optim import build_optimizer, build_scheduler

STAGES = ("train", "val", "test")
TTA = (None, "hflip")
DECISIONS = ("argmax", "balanced")
CALIBRATIONS = ("none", "temperature")
N_CONFORMAL = 2  # conformal thresholds kept: coverage 90 % and 95 % (skintumor.evaluate.conformal.COVERAGES)


class SkinTumorClassifier(L.LightningModule):
    """Args (all plain data):
    classes: class names, logit order. image_size, mean, std: the input contract, kept for predict.
    net: keyword arguments of :class:`AttentionGatedResNet18` (num_classes is set from classes).
    loss: ``gamma``, ``alpha`` ("auto" = inverse class frequency of ``class_counts``, null, or a
        list), ``label_smoothing`` (the focal loss on the class), ``mask_weight`` (> 0: the gates
        also learn the lesion masks of the training images that have one,
        :func:`~skintumor.models.losses.gate_mask_loss`), ``lesion_weight`` (the lesion decoder's
        loss, :func:`~skintumor.models.losses.lesion_mask_loss`; needs ``net.lesion_decoder``).
    optimizer: ``name`` (adam | adamw), ``lr``, ``weight_decay``.
    scheduler: ``name`` (step | cosine | none), ``step_size``, ``gamma`` (step),
        ``warmup_epochs`` (cosine), ``min_lr`` (cosine).
    class_counts: training images per class, for alpha "auto".
    channels_last: NHWC memory format (faster on CPU with oneDNN and on tensor-core GPUs).
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
    calibration: "none", or "temperature": after training, one temperature T dividing the logits is
        fitted on the inner validation split (lowest negative log-likelihood, :meth:`fit_temperature`),
        before the class offsets are chosen (on the tempered probabilities). It lives in the
        ``temperature`` buffer (1 = off), so the checkpoint, the bundle and ONNX carry it. T changes
        the probabilities' confidence, not their order within an image (without TTA).
    The ``conformal_thresholds`` buffer (zeros = none) holds the split-conformal (LAC) thresholds at
    90 % and 95 % coverage, set by training on the validation split (:mod:`skintumor.evaluate.conformal`).
    """

    def __init__(
        self,
        classes: list[str],
        net: dict | None = None,
        loss: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        class_counts: list[int] | None = None,
        image_size: int = 224,
        mean: float = 0.449,
        std: float = 0.226,
        channels_last: bool = True,
        tta: str | None = None,
        decision: str = "argmax",
        calibration: str = "none",
    ):
        super().__init__()
        if calibration not in CALIBRATIONS:
            raise ConfigError(f"model.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if decision not in DECISIONS:
            raise ConfigError(f"model.decision must be one of {DECISIONS}, got {decision!r}")
        if tta not in TTA:
            raise ConfigError(f"model.tta must be one of {TTA}, got {tta!r}")
        loss = dict(gamma=2.0, alpha="auto", label_smoothing=0.0, mask_weight=0.0, lesion_weight=1.0) | dict(loss or {})
        for key in ("mask_weight", "lesion_weight"):
            if float(loss[key]) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {loss[key]}")
        if loss["alpha"] == "auto":
            if class_counts is None:
                raise ValueError("loss.alpha='auto' needs the training fold's class_counts")
            loss["alpha"] = inverse_frequency_alpha(class_counts)
        net = dict(net or {}) | {"num_classes": len(classes)}
        self.save_hyperparameters(
            dict(
                classes=list(classes),
                net=net,
                loss=loss,
                optimizer=dict(name="adam", lr=1e-4, weight_decay=0.0) | dict(optimizer or {}),
                scheduler=dict(name="step", step_size=7, gamma=0.1) | dict(scheduler or {}),
                class_counts=class_counts,
                image_size=image_size,
                mean=mean,
                std=std,
                channels_last=channels_last,
                tta=tta,
                decision=decision,
                calibration=calibration,
            )
        )
        self.classes = list(classes)
        self.model = AttentionGatedResNet18(**net)
        for name, value in default_buffers(len(classes)).items():  # class offsets, temperature, conformal thresholds
            self.register_buffer(name, value)
        self.criterion = FocalLoss(loss["gamma"], loss["alpha"], loss["label_smoothing"])
        self.mask_weight = float(loss["mask_weight"])
        if self.mask_weight > 0 and not self.model.attention:
            # `experiment=recipe model=resnet18` is the gates-off baseline of the same recipe
            warnings.warn("loss.mask_weight is ignored: plain ResNet18 has no gates to point at lesions", stacklevel=2)
            self.mask_weight = 0.0
        self.lesion_weight = float(loss["lesion_weight"])
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": stage_metrics(len(classes)) for s in STAGES}
        )  # "train" would shadow .train()
        # (rows, probabilities with offsets, probabilities before them)
        self.test_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._test_buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_means: dict[str, MeanMetric] = {}  # per-epoch means of losses (:meth:`_add_to_mean`)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised images -> logits (B, C)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def score_proba(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> the network's probabilities (B, C) (with TTA), before any class offsets.

        ``logits``: the network's logits of ``x`` when already computed.
        """
        if logits is None:
            logits = self.model(x)
        return tta_probabilities(self.model, logits, x, self.hparams.tta == "hflip", self.temperature)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, C) probabilities -> (B, C) with the class offsets added to their logarithms (argmax = decision)."""
        if not self.decision_offsets.any():
            return probs
        return with_offsets(probs, self.decision_offsets)

    def predict_proba(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) -> probabilities (B, C) as validation and test decide with them (TTA, offsets)."""
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

    @torch.no_grad()
    def fit_temperature(self, loader, max_iter: int = 100) -> float:
        """Set ``temperature`` to the T that minimises the negative log-likelihood of :meth:`score_proba`
        on ``loader`` (the inner validation split) and return it. The network runs once (twice with
        hflip TTA); T is then fitted on the kept logits (L-BFGS on log T), within [0.05, 20]."""
        was_training, device = self.training, self.temperature.device
        self.eval()
        hflip = self.hparams.tta == "hflip"
        views, ys = [], []
        for x, y, *_ in loader:
            x = self._memory_format(x.to(device))
            logits = [self.model(x).float()] + ([self.model(torch.flip(x, dims=[-1])).float()] if hflip else [])
            views.append(torch.stack(logits))
            ys.append(y.to(device))
        self.train(was_training)
        logits, y = torch.cat(views, dim=1), torch.cat(ys)
        log_t = torch.zeros((), device=device, requires_grad=True)

        def nll() -> torch.Tensor:
            probs = torch.softmax(logits / log_t.exp(), dim=-1).mean(0)  # TTA: mean over the views
            return -probs[torch.arange(len(y)), y].clamp(min=1e-12).log().mean()

        optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = nll()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        fitted = float(log_t.detach().exp())  # bounded: a validation split it separates perfectly wants T -> 0
        self.temperature.fill_(min(max(fitted, 0.05), 20.0) if math.isfinite(fitted) else 1.0)
        return float(self.temperature)

    @torch.no_grad()
    def predict_rows(self, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows (N,), labels (N,), decided probabilities and scores (N, C) of a loader of ``(x, y, row, ...)``
        items, in eval mode: what ``predictions_*.csv`` holds (:meth:`predict_proba`, :meth:`score_proba`)."""
        was_training, device = self.training, self.decision_offsets.device
        self.eval()
        parts = []
        for x, y, rows, *_ in loader:
            scores = self.score_proba(self._memory_format(x.to(device)))
            parts.append((rows.numpy(), y.numpy(), self.decide(scores).cpu().numpy(), scores.cpu().numpy()))
        self.train(was_training)
        return tuple(np.concatenate(p) for p in zip(*parts))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints written before `decision` / `calibration` existed: plain argmax, T = 1, no sets
        fill_default_buffers(checkpoint["state_dict"], len(self.classes))

    def training_step(self, batch, batch_idx):
        x, y, _ = batch[:3]
        masks = batch[3] if len(batch) > 3 else None
        out = self.model.forward_details(self._memory_format(x), lesion=masks is not None and self.lesion_weight > 0)
        terms = self.training_losses(out, y, masks)
        for name, value in terms.items():
            if name != "class":
                self._add_to_mean(f"train/{name}_loss", value, len(y))
        loss = terms["class"]
        if "mask" in terms:
            loss = loss + self.mask_weight * terms["mask"]
        if "lesion" in terms:
            loss = loss + self.lesion_weight * terms["lesion"]
        self._update_metrics("train", y, torch.softmax(out.logits.float(), dim=1), loss)
        return loss

    def training_losses(self, out: ModelOutput, y: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The loss terms of one training batch, unweighted: ``class`` (focal loss), and where the
        batch has lesion masks ``mask`` (the gates point at the lesion) and ``lesion`` (the decoder
        outlines it) when their weights are on."""
        terms = {"class": self.criterion(out.logits, y)}
        if self.mask_weight > 0 and masks is not None:
            terms["mask"] = torch.stack([gate_mask_loss(a, masks) for a in out.attention.values()]).mean()
        if out.lesion_logits is not None:
            terms["lesion"] = lesion_mask_loss(out.lesion_logits, masks)
        return terms

    def validation_step(self, batch, batch_idx):
        x, y = self._memory_format(batch[0]), batch[1]
        out = self.model.forward_details(x, lesion=False)
        scores = self.score_proba(x, out.logits)
        self._update_metrics("val", y, scores, self.criterion(out.logits, y))
        for name, alpha in out.attention.items():  # does the gate vary within an image?
            self._add_to_mean(f"val/{name}_spread", alpha.float().flatten(1).std(dim=1).mean(), len(y))

    def test_step(self, batch, batch_idx):
        x, y, rows = self._memory_format(batch[0]), batch[1], batch[2]
        logits = self.model(x)
        scores = self.score_proba(x, logits)
        probs = self._update_metrics("test", y, scores, self.criterion(logits, y))
        self._test_buffer.append((rows.detach(), probs.detach(), scores.detach()))

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def _update_metrics(self, stage: str, y: torch.Tensor, scores: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Feed the stage's metrics: the decision from the probabilities with the class offsets (none in
        training), the ranking (AUROC) from ``scores``, the probabilities before them. -> the decided probabilities."""
        probs = scores if stage == "train" else self.decide(scores)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics["stats"].update(probs, y)  # the decision
        metrics["auroc"].update(scores, y)  # the ranking: offsets are a threshold, not a score
        self._add_to_mean(f"{stage}/loss", loss, len(y))
        return probs

    def _add_to_mean(self, key: str, value: torch.Tensor, n: int) -> None:
        """Average ``value`` over the epoch (weighted by batch size ``n``) in a torchmetrics ``MeanMetric``.
        Under DDP every rank then syncs in the same place, the epoch's end in :meth:`_log_epoch`: values
        logged with Lightning's ``sync_dist`` are synced when first read, which the progress bar does on
        rank 0 alone, and the ranks' collectives no longer match (a hang)."""
        if key not in self._epoch_means:
            self._epoch_means[key] = MeanMetric().to(self.device)
        self._epoch_means[key].update(value.detach().float(), weight=n)

    def _log_epoch(self, stage: str) -> None:
        collection = self.metrics[f"{stage}_metrics"]
        means = {k: m for k, m in sorted(self._epoch_means.items()) if k.startswith(f"{stage}/")}
        if self.trainer.sanity_checking:  # sanity batches must not leak into the first epoch's numbers
            for metric in [collection, *means.values()]:
                metric.reset()
            return
        values = summarise(collection.compute(), self.classes)  # torchmetrics: synced over DDP ranks
        collection.reset()
        for key, metric in means.items():  # the same keys in the same order on every rank
            values[key.split("/", 1)[1]] = float(metric.compute())
            metric.reset()
        shown = {"auroc_macro", "bal_acc", "loss"} if stage == "val" else {"loss"} if stage == "train" else set()
        for key, value in values.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in shown)  # already synced

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_start(self):
        self._test_buffer = []

    def on_test_epoch_end(self):
        self._log_epoch("test")
        rows, probs, scores = (
            self.all_gather(torch.cat(part)) for part in zip(*self._test_buffer)
        )  # DDP: every rank's share
        rows = rows.reshape(-1).cpu().numpy()
        probs, scores = (t.reshape(-1, len(self.classes)).float().cpu().numpy() for t in (probs, scores))
        rows, first = np.unique(rows, return_index=True)  # DistributedSampler pads with repeats
        self.test_predictions = (rows, probs[first], scores[first])

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model.parameters(), **self.hparams.optimizer)
        scheduler = build_scheduler(optimizer, max_epochs=self.trainer.max_epochs, **self.hparams.scheduler)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class DecisionPath(nn.Module):
    """A trained classifier's whole decision as one graph, with no data-dependent branch (so it
    traces and exports to ONNX): the network, hflip TTA, softmax, and the class offsets.

    Shapes: x (B, 1, H, W) normalised images -> probs (B, C), the probabilities the decision is made
    with (argmax), and scores (B, C), the network's probabilities before the offsets (what AUROC
    ranks). The same numbers as :meth:`SkinTumorClassifier.predict_proba` and :meth:`~SkinTumorClassifier.score_proba`.
    """

    def __init__(self, classifier: SkinTumorClassifier):
        super().__init__()
        self.net = classifier.model
        self.tta = classifier.hparams.tta == "hflip"
        self.register_buffer("offsets", classifier.decision_offsets.detach().clone().float())
        self.register_buffer("temperature", classifier.temperature.detach().clone().float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decide(self.net(x), x)

    def decide(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the network's logits of ``x`` (B, C), already computed."""
        scores = tta_probabilities(self.net, logits, x, self.tta, self.temperature)  # self.tta: fixed when built
        return with_offsets(scores, self.offsets), scores


def tta_probabilities(
    net: nn.Module, logits: torch.Tensor, x: torch.Tensor, hflip: bool, temperature: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """The network's probabilities (B, C) from its logits of ``x`` (B, C) divided by ``temperature``
    (1: unchanged, bit for bit); with ``hflip``, the mean with those of the left-right mirror image
    (one more forward pass)."""
    probs = torch.softmax(logits.float() / temperature, dim=1)
    if hflip:
        mirrored = net(torch.flip(x, dims=[-1]))  # width axis
        probs = (probs + torch.softmax(mirrored.float() / temperature, dim=1)) / 2
    return probs


def default_buffers(n_classes: int) -> dict[str, torch.Tensor]:
    """The buffers set after training on the validation split, at their "off" value:
    ``decision_offsets`` zeros (plain argmax, added to log-probabilities), ``temperature`` 1 (no
    scaling) and ``conformal_thresholds`` zeros (no sets)."""
    return {
        "decision_offsets": torch.zeros(n_classes),
        "temperature": torch.tensor(1.0),
        "conformal_thresholds": torch.zeros(N_CONFORMAL),
    }


def fill_default_buffers(state: dict, n_classes: int) -> dict:
    """A state dict (checkpoint, bundle) written before a buffer existed gets it at its "off" value."""
    for name, value in default_buffers(n_classes).items():
        state.setdefault(name, value)
    return state


def with_offsets(probs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, C) probabilities with the class ``offsets`` (C,) added to their logarithms, renormalised."""
    return torch.softmax(probs.clamp(min=1e-12).log() + offsets, dim=1)
