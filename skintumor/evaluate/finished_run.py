"""A finished training run read back from its directory: the chosen checkpoint, the split, the images.

    run = FinishedRun.open("outputs/cv/recipe/fold_0")
    y, p = run.classifier.predict_loader(run.loader("test"))  # the p_ of predictions_test.csv
    y, s = run.classifier.predict_loader(run.loader("val"), decide=False)  # before class offsets

``split.json`` says which manifest rows were train / val / test, ``manifest.csv`` where they are,
and ``.hydra/config.yaml`` whether training cropped them to the scan area; nothing is re-split or
re-checked, so explain, the report's helpers and the benchmarks see exactly what training saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from torch.utils.data import DataLoader

from skintumor.data.check import decode_manifest
from skintumor.data.datamodule import CachedImageDataset, decode_resized, resize_pair
from skintumor.data.manifest import Manifest
from skintumor.errors import DataError
from skintumor.models.checkpoint import load_classifier
from skintumor.models.module import SkinTumorClassifier

PARTS = ("train", "val", "test")
CHECKPOINTS = ("best.ckpt", "last.ckpt")


def tested_checkpoint_name(run_dir: Path) -> str:
    """The checkpoint file a finished run tested, as ``metrics_val.json`` records it (best.ckpt if unreadable)."""
    try:
        return Path(json.loads((run_dir / "metrics_val.json").read_text())["checkpoint"]).name
    except (json.JSONDecodeError, KeyError, TypeError):
        return "best.ckpt"


@dataclass
class FinishedRun:
    """path: the run directory; classifier: the tested checkpoint (or the one asked for) in eval mode; manifest:
    the run's manifest (root and classes from split.json); rows: manifest rows per part (train, val, test);
    checkpoint: the file name of the classifier's weights (best.ckpt or last.ckpt)."""

    path: Path
    classifier: SkinTumorClassifier
    manifest: Manifest
    rows: dict[str, list[int]]
    checkpoint: str

    @classmethod
    def open(cls, run_dir: str | Path, checkpoint: str | None = None) -> FinishedRun:
        """Read ``run_dir``; DataError naming the file when one is missing or unreadable.

        ``checkpoint``: None, the one the run tested (``test_checkpoint``: best.ckpt unless the run
        was trained with ``test_checkpoint=last``), which carries the class offsets; or a name of
        :data:`CHECKPOINTS` (the other one's offsets were never chosen: zero)."""
        run_dir = Path(run_dir)
        # training writes metrics_val.json once the tested checkpoint is final (decision offsets
        # included): without it the run is still training or was cut short
        if not (run_dir / "metrics_val.json").is_file():
            raise DataError(f"{run_dir / 'metrics_val.json'}: not found (is {run_dir} a finished training run?)")
        checkpoint = checkpoint or tested_checkpoint_name(run_dir)
        if checkpoint not in CHECKPOINTS:
            raise DataError(f"{checkpoint}: not a run's checkpoint (one of {', '.join(CHECKPOINTS)})")
        weights = f"checkpoints/{checkpoint}"
        for name in (weights, "manifest.csv", "split.json"):
            if not (run_dir / name).is_file():
                raise DataError(f"{run_dir / name}: not found (is {run_dir} a finished training run?)")
        try:
            split = json.loads((run_dir / "split.json").read_text())
            rows = {part: [int(r) for r in split[part]] for part in PARTS}
            root, classes = split["root"], list(split["classes"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{run_dir / 'split.json'}: unreadable split ({err})") from None
        manifest = Manifest.from_csv(run_dir / "manifest.csv", root=root, classes=classes)
        classifier = load_classifier(run_dir / weights)
        if list(classifier.hparams.classes) != manifest.classes:
            raise DataError(
                f"{run_dir / weights}: classes {list(classifier.hparams.classes)} "
                f"differ from split.json's {manifest.classes}"
            )
        return cls(run_dir, classifier, manifest, rows, checkpoint)

    @property
    def cropped(self) -> bool:
        """Whether training cropped images to the scan area (``data.crop`` in ``.hydra/config.yaml``)."""
        config = self.path / ".hydra" / "config.yaml"
        if not config.is_file():
            return False
        return bool(((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("crop", False))

    def decode(self, part: str) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Images and masks of ``part``'s rows decoded as training did (size, scan-area crop)."""
        subset = self.manifest.subset(self.rows[part])
        size = int(self.classifier.hparams.image_size)
        if not self.cropped:
            return decode_resized(subset, size)
        decoded = decode_manifest(subset, hashes=False, crop=True, transform=partial(resize_pair, size=size))
        if decoded.errors:
            more = f" (and {len(decoded.errors) - 1} more)" if len(decoded.errors) > 1 else ""
            raise DataError(decoded.errors[0] + more)
        return decoded.images, decoded.masks

    def loader(self, part: str, batch_size: int = 64) -> DataLoader:
        """Batches ``(x, y, index)`` of ``part``, normalised as the checkpoint expects, in row order."""
        images, _ = self.decode(part)
        labels = self.manifest.labels
        hp = self.classifier.hparams
        dataset = CachedImageDataset(
            images, [labels[r] for r in self.rows[part]], np.arange(len(images)), hp.mean, hp.std
        )
        return DataLoader(dataset, batch_size=batch_size)
