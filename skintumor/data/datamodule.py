"""The Lightning data module: manifest -> patient-grouped split -> cached tensors -> loaders."""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from skintumor.data.check import prepare_manifest
from skintumor.data.dedup import DEFAULT_MAX_DISTANCE
from skintumor.data.folds import PatientGroupedFolds, Split, assert_disjoint_groups
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.manifest import Manifest, warn_mixed_label_patients
from skintumor.data.sources import check_source_settings, load_source
from skintumor.errors import ConfigError, DataError

SAMPLERS = (None, "balanced")
Augment = Callable[..., dict]  # albumentations-style: augment(image=uint8 HxW) -> {"image": uint8 HxW}


def decode_resized(manifest: Manifest, image_size: int, with_masks: bool = True):
    """Decode every image once into ``image_size`` x ``image_size`` uint8 arrays (and masks).

    Returns ``(images, masks)``; ``masks[i]`` is a bool array or None. Images are stretched to a
    square, as the study did; INTER_AREA keeps speckle statistics honest when shrinking.
    """
    images, masks = [], []
    for i in range(len(manifest)):
        image = read_greyscale(manifest.image_path(i))
        mask_path = manifest.mask_path(i) if with_masks else None
        mask = read_mask(mask_path, image.shape) if mask_path is not None else None
        image, mask = resize_pair(image, mask, image_size)
        images.append(image)
        masks.append(mask)
    return images, masks


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int):
    """Image (INTER_AREA) and mask (nearest) stretched to ``size`` x ``size``: (image, mask)."""
    return (
        _resize(image, size, cv2.INTER_AREA),
        _resize(mask.astype(np.uint8), size, cv2.INTER_NEAREST).astype(bool) if mask is not None else None,
    )


def _resize(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    if array.shape == (size, size):
        return array
    return cv2.resize(array, (size, size), interpolation=interpolation)


def to_tensor(image: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """(H, W) uint8 -> (1, H, W) float: scaled to [0, 1], then ``(x - mean) / std`` (the input contract)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    return ((x - mean) / std).unsqueeze(0)


MIN_IMAGE_SIZE = 32  # ResNet18 halves the image five times: below 32 px layer4 has no pixel left to see
MAX_IMAGE_SIZE = 4096  # 4x an ultrasound frame's resolution; ResNet18 would need about 1 GB of activations per image


def check_loader_settings(image_size, batch_size, num_workers, std) -> None:
    """ConfigError naming the ``data.*`` setting that cannot work, with what it can be, before any image is read."""
    ranges = (
        (
            "image_size",
            image_size,
            MIN_IMAGE_SIZE,
            MAX_IMAGE_SIZE,
            " px (a ResNet needs at least 32 px: it halves the image five times)",
        ),
        ("batch_size", batch_size, 1, None, ""),
        ("num_workers", num_workers, 0, None, ""),
    )
    for name, value, least, most, unit in ranges:
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not whole or value < least or (most is not None and value > most):
            allowed = f"{least}..{most}" if most is not None else f"at least {least}"
            raise ConfigError(f"data.{name}={value!r}: must be a whole number, {allowed}{unit}")
    if not isinstance(std, numbers.Real) or isinstance(std, bool) or not std > 0:
        raise ConfigError(f"data.std={std!r}: must be a number above 0 (images are divided by it)")


class CachedImageDataset(Dataset):
    """Decoded uint8 images in memory -> ``(x: 1xHxW float, y: int, index: int)``.

    ``index`` is the row in the manifest, so predictions can be joined back to files. With
    ``masks`` (training), items are ``(x, y, index, m)``: ``m`` (1xHxW float) is the lesion mask,
    moved by the same geometric augmentation as the image, or -1 everywhere when the row has none.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        labels: list[int],
        indices: np.ndarray,
        mean: float,
        std: float,
        augment: Augment | None = None,
        masks: list[np.ndarray | None] | None = None,
    ):
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        self.mean, self.std, self.augment, self.masks = mean, std, augment, masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        row = int(self.indices[item])
        image = self.images[row]
        mask = self.masks[row] if self.masks is not None else None
        if self.augment is not None:
            if mask is not None:
                moved = self.augment(image=image, mask=mask.astype(np.uint8))
                image, mask = moved["image"], moved["mask"]
            else:
                image = self.augment(image=image)["image"]
        x = to_tensor(image, self.mean, self.std)
        if self.masks is None:
            return x, self.labels[row], row
        m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None] if mask is not None else -torch.ones_like(x)
        return x, self.labels[row], row, m


class UltrasoundDataModule(L.LightningDataModule):
    """Loads a source into a manifest, splits it by patient groups, serves cached 1-channel images.

    Args:
        source: name in :data:`skintumor.data.sources.SOURCES` ("phantom", "folder", "csv", ...).
        root: the source's folder. options: further keyword arguments of the source.
        fold / n_folds / val_fraction / seed: the outer fold used and how folds are drawn.
        image_size: square side in px. batch_size, num_workers: loader settings.
        mean / std: intensity normalisation of [0, 1] images (defaults: ImageNet's grey values,
            so ImageNet weights see what they expect; BatchNorm makes the exact value uncritical).
        augment: training transform applied to uint8 images (see :mod:`skintumor.augment`).
        manifest: a ready :class:`Manifest` instead of ``source`` (for notebooks and tests).
        crop / dedup / max_distance / label_conflicts: the data check's options
            (:func:`skintumor.data.check.prepare_manifest`): scan-area crop, near-duplicate
            grouping, its threshold, and "keep" or "exclude" for near-duplicates with two labels.
        sampler: None (shuffle the training part) or "balanced": draw training images with
            replacement, weight 1/(images of its class), so every class is equally likely per draw;
            an epoch still has len(training part) draws.
        sampler_seed: seed of the balanced sampler's draws (Hydra passes the training ``seed``);
            None: they come from torch's global generator, like shuffling. Not the fold ``seed``:
            seed-ensemble members share the folds but must not share their batches.
        inner_fold: which inner fold of the training part validates (default 0); fold-ensemble
            members use different ones (:meth:`PatientGroupedFolds.split`).
        nested: judge without the test fold: the training part's validation split stands in as the
            test fold, train / val come from the rest (:meth:`PatientGroupedFolds.split`).
    """

    def __init__(
        self,
        source: str | None = "folder",
        root: str | None = None,
        options: dict | None = None,
        fold: int = 0,
        n_folds: int = 5,
        val_fraction: float = 0.2,
        seed: int = 42,
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 0,
        mean: float = 0.449,
        std: float = 0.226,
        augment: Augment | None = None,
        manifest: Manifest | None = None,
        pin_memory: bool = False,
        crop: bool = False,
        dedup: bool = False,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        label_conflicts: str = "keep",
        sampler: str | None = None,
        sampler_seed: int | None = None,
        inner_fold: int = 0,
        nested: bool = False,
    ):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler must be one of {SAMPLERS}, got {sampler!r}")
        check_loader_settings(image_size, batch_size, num_workers, std)
        if manifest is None:
            check_source_settings(source, root, options or {})
        self.sampler, self.sampler_seed = sampler, sampler_seed
        self.source, self.root, self.options = source, root, dict(options or {})
        self.fold, self.n_folds, self.val_fraction, self.seed = fold, n_folds, val_fraction, seed
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.mean, self.std, self.augment, self.pin_memory = mean, std, augment, pin_memory
        self.manifest = manifest
        self.crop, self.dedup, self.max_distance, self.label_conflicts = crop, dedup, max_distance, label_conflicts
        self.inner_fold, self.nested = inner_fold, nested
        self.split: Split | None = None
        self.images: list[np.ndarray] | None = None
        self.masks: list[np.ndarray | None] | None = None

    # -- loading -------------------------------------------------------------------------------
    def load_manifest(self) -> Manifest:
        if self.manifest is None:
            self.manifest = load_source(self.source, root=self.root, **self.options)
        return self.manifest

    def setup(self, stage: str | None = None) -> None:
        if self.images is not None:
            return  # decoded once; fit, validate and test share the cache
        manifest = self.load_manifest()
        warn_mixed_label_patients(manifest)
        # the data check: every bad file listed in one DataError, near-duplicates grouped
        prepared = prepare_manifest(
            manifest,
            crop=self.crop,
            dedup=self.dedup,
            max_distance=self.max_distance,
            label_conflicts=self.label_conflicts,
            progress=True,
            transform=partial(resize_pair, size=self.image_size),
        )
        self.manifest, self.images, self.masks = prepared.manifest, prepared.images, prepared.masks
        manifest = self.manifest
        folds = PatientGroupedFolds(
            manifest.labels, manifest.groups, self.n_folds, self.val_fraction, self.seed, classes=manifest.classes
        )
        self.split = folds.split(self.fold, self.inner_fold, self.nested)
        assert_disjoint_groups(self.split, self.manifest.table["patient_id"])  # patients too, not only groups

    @property
    def classes(self) -> list[str]:
        return self.load_manifest().classes

    def class_counts(self, part: str = "train") -> list[int]:
        """Images per class in one part of the split (for the focal-loss alpha)."""
        labels = np.asarray(self.manifest.labels)[getattr(self.split, part)]
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    def write_split(self, run_dir: str | Path) -> None:
        """Write ``manifest.csv`` and ``split.json`` so report and explain never recompute folds. A file of
        that name with other contents (a user's data folder, another run) is never replaced: DataError."""
        run_dir = Path(run_dir)
        info = self.split.as_dict() | {
            "manifest": "manifest.csv",
            "root": str(Path(self.manifest.root).resolve()),
            "classes": self.classes,
            "n_folds": self.n_folds,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "inner_fold": self.inner_fold,
            "nested": self.nested,
        }
        files = {"manifest.csv": self.manifest.table.to_csv(index=False), "split.json": json.dumps(info)}
        for name, text in files.items():
            path = run_dir / name
            if path.exists() and path.read_text() != text:
                raise DataError(f"{path}: exists with other contents; a run never replaces a file it did not write")
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (run_dir / name).write_text(text)

    # -- loaders -------------------------------------------------------------------------------
    def _dataset(self, part: str, augment: Augment | None) -> CachedImageDataset:
        # training items carry the lesion masks when the data has any (for model.loss.mask_weight)
        masks = self.masks if part == "train" and any(m is not None for m in self.masks or []) else None
        return CachedImageDataset(
            self.images, self.manifest.labels, getattr(self.split, part), self.mean, self.std, augment, masks
        )

    def _loader(self, dataset: Dataset, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def balanced_sampler(self) -> WeightedRandomSampler:
        """Draws the training part with replacement, each image weighted 1/(its class's count)."""
        labels = np.asarray(self.manifest.labels)[self.split.train]
        weights = 1.0 / np.bincount(labels)[labels]
        generator = None if self.sampler_seed is None else torch.Generator().manual_seed(self.sampler_seed)
        return WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels), replacement=True, generator=generator
        )

    def train_dataloader(self) -> DataLoader:
        sampler = self.balanced_sampler() if self.sampler == "balanced" else None
        return self._loader(self._dataset("train", self.augment), shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", None), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test", None), shuffle=False)
