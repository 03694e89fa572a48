"""Hand-made augmentations: what the data module uses when no learned policy is given.

``default`` is a mild, B-mode-safe recipe: left-right flip, a small affine with black fill (no echo
outside the scan), brightness/contrast as from a different gain setting, and a little speckle.
``strong`` widens every range and adds gamma, blur and small black holes. No vertical flip: depth
has a direction. ``none`` returns the image unchanged.
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
    return Augmentation([
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.MultiplicativeNoise(multiplier=(0.9, 1.1), elementwise=True, p=0.3),
    ], seed=seed, name="default")


def strong(seed: int | None = None) -> Augmentation:
    """Wider ranges for training from scratch on a few hundred images: flip (p 0.5), affine (p 0.9:
    +-10 % shift, 0.85-1.25 scale, +-15 deg, +-5 deg shear), brightness/contrast +-25 % (p 0.7),
    gamma 0.7-1.5 (p 0.5), speckle x[0.8, 1.2] (p 0.4), blur 3-5 px (p 0.2), 1-4 black holes of
    5-15 % side (p 0.3). Still B-mode-safe: no vertical flip, black fill."""
    return Augmentation([
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.25), rotate=(-15, 15), shear=(-5, 5),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.9),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.RandomGamma(gamma_limit=(70, 150), p=0.5),
        A.MultiplicativeNoise(multiplier=(0.8, 1.2), elementwise=True, p=0.4),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                        hole_width_range=(0.05, 0.15), fill=0, p=0.3),
    ], seed=seed, name="strong")


PRESETS = {"none": none, "default": default, "strong": strong}
