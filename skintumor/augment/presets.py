"""Hand-made augmentations: what the data module uses when no learned policy is given.

``default`` is a mild, B-mode-safe recipe: left-right flip, a small affine with black fill (no echo
outside the scan), brightness/contrast as from a different gain setting, and a little speckle.
No vertical flip: depth has a direction. ``none`` returns the image unchanged.
"""

from __future__ import annotations

import albumentations as A
import cv2

from skintumor.augment.compose import Augmentation


def none(seed: int | None = None) -> Augmentation:
    """The identity: ``t(image=x)["image"]`` is ``x``."""
    return Augmentation([], seed=seed, name="none")


def default(seed: int | None = None) -> Augmentation:
    """Flip (p 0.5), affine (p 0.7: +-6 % shift, 0.9-1.1 scale, +-10 deg), brightness/contrast +-15 %
    (p 0.5), speckle x[0.9, 1.1] (p 0.3)."""
    return Augmentation(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                translate_percent=(-0.06, 0.06),
                scale=(0.9, 1.1),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), elementwise=True, p=0.3),
        ],
        seed=seed,
        name="default",
    )


PRESETS = {"none": none, "default": default}
