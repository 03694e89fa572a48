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
from skintumor.data.manifest import DataError, Manifest
from skintumor.models.module import SkinTumorClassifier, load_classifier

PARTS = ("train", "val", "test")
CHECKPOINTS = ("best.ckpt", "last.ckpt")


@dataclass
class FinishedRun:
    """path: the run directory; classifier: ``best.ckpt`` (or ``last.ckpt``) in eval mode; manifest:
    the run's manifest (root and classes from split.json); rows: manifest rows per part (train, val, test)."""

    path: Path
    classifier: SkinTumorClassifier
    manifest: Manifest
    rows: dict[str, list[int]]

    @classmethod
    def open(cls, run_dir: str | Path, checkpoint: str = "best.ckpt") -> FinishedRun:
        """Read ``run_dir``; DataError naming the file when one is missing or unreadable.

        ``checkpoint="last.ckpt"``: the final epoch's weights instead of the chosen ones; its class
        offsets were never chosen (zero), only ``best.ckpt`` carries them."""
        if checkpoint not in CHECKPOINTS:
            raise DataError(f"{checkpoint}: not a run's checkpoint (one of {', '.join(CHECKPOINTS)})")
        run_dir, weights = Path(run_dir), f"checkpoints/{checkpoint}"
        # training writes metrics_val.json once best.ckpt is final (decision offsets included):
        # without it the run is still training (best.ckpt may yet change) or was cut short
        for name in (weights, "manifest.csv", "split.json", "metrics_val.json"):
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
            raise DataError(f"{run_dir / weights}: classes {list(classifier.hparams.classes)} "
                            f"differ from split.json's {manifest.classes}")
        return cls(run_dir, classifier, manifest, rows)

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
        dataset = CachedImageDataset(images, [labels[r] for r in self.rows[part]], np.arange(len(images)),
                                     hp.mean, hp.std)
        return DataLoader(dataset, batch_size=batch_size)
