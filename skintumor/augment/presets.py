"""Hand-made augmentation for B-mode scans."""
from __future__ import annotations

import albumentations as A


def default_augmentation(seed: int | None = None) -> A.Compose:
    """Horizontal flip, small affine, brightness/contrast. No vertical flip: depth has a direction
    (posterior enhancement and shadowing lie below a lesion)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ], seed=seed)
