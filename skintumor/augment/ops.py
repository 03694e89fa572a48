"""Ultrasound-aware augmentation operations at a fixed magnitude, built on albumentations.

Every operation takes a magnitude ``m`` in [0, 1] and maps it linearly (so monotonically) onto the
range of one parameter, ``low + m * (high - low)``. The policy search asks for "operation X at
magnitude m with probability p"; :func:`build_op` answers with an albumentations transform whose
strength is fixed. Signed operations (shear, translate, rotate, zoom, brightness, contrast, gamma)
pick the direction at random, 50/50, like AutoAugment's mirrored magnitudes.

| op            | parameter (unit)                                  | low   | high  | signed | default |
|---------------|---------------------------------------------------|-------|-------|--------|---------|
| shear_x       | shear angle along x (degrees)                     | 0     | 17    | yes    | on      |
| shear_y       | shear angle along y (degrees)                     | 0     | 17    | yes    | on      |
| translate_x   | shift along x (fraction of width)                 | 0     | 0.25  | yes    | on      |
| translate_y   | shift along y (fraction of height)                | 0     | 0.25  | yes    | on      |
| rotate        | rotation (degrees)                                | 0     | 30    | yes    | on      |
| hflip         | none: mirror left-right                           | -     | -     |        | on      |
| zoom          | scale change: x(1+s) in, x1/(1+s) out             | 0     | 0.3   | yes    | on      |
| brightness    | brightness shift (fraction of 255)                | 0     | 0.4   | yes    | on      |
| contrast      | contrast change (factor - 1)                      | 0     | 0.5   | yes    | on      |
| gamma         | log2 of gamma (gamma in [1/2^g, 2^g])             | 0     | 1     | yes    | on      |
| sharpness     | sharpen alpha (0 = original, 1 = sharpened)       | 0     | 1     |        | on      |
| blur          | Gaussian blur sigma (pixels)                      | 0.1   | 2.5   |        | on      |
| noise         | additive Gaussian noise std (fraction of 255)     | 0     | 0.15  |        | on      |
| speckle       | multiplicative noise half-width (x in [1-s, 1+s]) | 0     | 0.5   |        | on      |
| clahe         | CLAHE clip limit                                  | 1     | 6     |        | on      |
| equalize      | none: global histogram equalisation               | -     | -     |        | on      |
| autocontrast  | histogram cut-off at each end (percent)           | 0     | 5     |        | on      |
| cutout        | side of one square hole, filled black (fraction)  | 0.05  | 0.4   |        | on      |
| invert        | none: negative image                              | -     | -     |        | off     |
| solarize      | share of grey levels inverted (1 - threshold)     | 0     | 1     |        | off     |
| posterize     | bits dropped (of 8)                               | 1     | 7     |        | off     |
| color         | saturation change (factor - 1); no-op on greyscale | 0     | 0.9   | yes    | off     |

Why some are off by default: B-mode brightness encodes echogenicity, so a negative, a solarised or
posterised image shows tissue that cannot exist, and greyscale has no colour to change. There is no
vertical flip at all: depth runs from the probe down, and a flipped scan puts the skin at the bottom.
Geometric ops fill uncovered pixels with black (no echo), not with reflected anatomy.

Inputs are HxW uint8 greyscale; outputs have the same shape and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

_BLACK = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}


@dataclass(frozen=True)
class Op:
    """One operation: the range its magnitude maps to and how to build it at a fixed parameter."""

    name: str
    description: str
    low: float | None  # None: the op has no magnitude (hflip, equalize, invert)
    high: float | None
    signed: bool
    default: bool  # part of the default search space
    make: Callable[[float, float], A.BasicTransform]  # (parameter, sign +1/-1) -> transform with p=1

    def parameter(self, magnitude: float) -> float | None:
        """The op's parameter at ``magnitude`` in [0, 1] (linear, increasing); None if it has none."""
        check_unit("magnitude", magnitude)
        if self.low is None:
            return None
        return self.low + float(magnitude) * (self.high - self.low)


class GreyAutoContrast(A.ImageOnlyTransform):
    """Stretch grey levels linearly so the ``cutoff`` percentiles at each end become 0 and 255.

    Own code (PIL's autocontrast): albumentations 2.0.8's AutoContrast returns 2-D greyscale unchanged.
    """

    def __init__(self, cutoff: float = 0.0, p: float = 1.0):
        super().__init__(p=p)
        self.cutoff = float(cutoff)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        low, high = np.percentile(img, [self.cutoff, 100.0 - self.cutoff])
        if high <= low:  # a flat image has no range to stretch
            return img
        stretched = (img.astype(np.float32) - low) * (255.0 / (high - low))
        return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("cutoff",)


def _affine(**kwargs) -> A.BasicTransform:
    return A.Affine(p=1.0, **_BLACK, **kwargs)


def _xy(value: float, axis: str) -> dict:
    """Albumentations' per-axis dict with the other axis left unchanged."""
    other = {"x": "y", "y": "x"}[axis]
    return {axis: (value, value), other: (0.0, 0.0)}


# Each maker receives the parameter from the table above and a sign (+1 or -1; always +1 if unsigned).
OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op("shear_x", "shear along x", 0.0, 17.0, True, True, lambda v, s: _affine(shear=_xy(s * v, "x"))),
        Op("shear_y", "shear along y", 0.0, 17.0, True, True, lambda v, s: _affine(shear=_xy(s * v, "y"))),
        Op(
            "translate_x",
            "shift along x",
            0.0,
            0.25,
            True,
            True,
            lambda v, s: _affine(translate_percent=_xy(s * v, "x")),
        ),
        Op(
            "translate_y",
            "shift along y",
            0.0,
            0.25,
            True,
            True,
            lambda v, s: _affine(translate_percent=_xy(s * v, "y")),
        ),
        Op("rotate", "rotate about the centre", 0.0, 30.0, True, True, lambda v, s: _affine(rotate=(s * v, s * v))),
        Op("hflip", "mirror left-right", None, None, False, True, lambda v, s: A.HorizontalFlip(p=1.0)),
        Op("zoom", "zoom in or out", 0.0, 0.3, True, True, lambda v, s: _affine(scale=((1 + v) ** s, (1 + v) ** s))),
        Op(
            "brightness",
            "brightness shift",
            0.0,
            0.4,
            True,
            True,
            lambda v, s: A.RandomBrightnessContrast(brightness_limit=(s * v, s * v), contrast_limit=(0, 0), p=1.0),
        ),
        Op(
            "contrast",
            "contrast change",
            0.0,
            0.5,
            True,
            True,
            lambda v, s: A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(s * v, s * v), p=1.0),
        ),
        Op(
            "gamma",
            "gamma curve",
            0.0,
            1.0,
            True,
            True,
            lambda v, s: A.RandomGamma(gamma_limit=(100 * 2 ** (s * v),) * 2, p=1.0),
        ),
        Op(
            "sharpness",
            "unsharp sharpening",
            0.0,
            1.0,
            False,
            True,
            lambda v, s: A.Sharpen(alpha=(v, v), lightness=(1.0, 1.0), p=1.0),
        ),
        Op(
            "blur",
            "Gaussian blur",
            0.1,
            2.5,
            False,
            True,
            lambda v, s: A.GaussianBlur(blur_limit=0, sigma_limit=(v, v), p=1.0),
        ),
        Op(
            "noise",
            "additive Gaussian noise",
            0.0,
            0.15,
            False,
            True,
            lambda v, s: A.GaussNoise(std_range=(v, v), p=1.0),
        ),
        Op(
            "speckle",
            "multiplicative (speckle) noise",
            0.0,
            0.5,
            False,
            True,
            lambda v, s: A.MultiplicativeNoise(multiplier=(1 - v, 1 + v), elementwise=True, p=1.0),
        ),
        Op(
            "clahe",
            "contrast-limited adaptive histogram equalisation",
            1.0,
            6.0,
            False,
            True,
            lambda v, s: A.CLAHE(clip_limit=(v, v), p=1.0),
        ),
        Op("equalize", "global histogram equalisation", None, None, False, True, lambda v, s: A.Equalize(p=1.0)),
        Op(
            "autocontrast",
            "stretch the grey range",
            0.0,
            5.0,
            False,
            True,
            lambda v, s: GreyAutoContrast(cutoff=v, p=1.0),
        ),
        Op(
            "cutout",
            "black square hole",
            0.05,
            0.4,
            False,
            True,
            lambda v, s: A.CoarseDropout(
                num_holes_range=(1, 1), hole_height_range=(v, v), hole_width_range=(v, v), fill=0, p=1.0
            ),
        ),
        Op("invert", "negative image", None, None, False, False, lambda v, s: A.InvertImg(p=1.0)),
        Op(
            "solarize",
            "invert grey levels above a threshold",
            0.0,
            1.0,
            False,
            False,
            lambda v, s: A.Solarize(threshold_range=(1 - v, 1 - v), p=1.0),
        ),
        Op(
            "posterize",
            "drop low bits",
            1.0,
            7.0,
            False,
            False,
            lambda v, s: A.Posterize(num_bits=8 - int(round(v)), p=1.0),
        ),
        Op(
            "color",
            "saturation change",
            0.0,
            0.9,
            True,
            False,
            lambda v, s: A.ColorJitter(brightness=0, contrast=0, saturation=(1 + s * v,) * 2, hue=0, p=1.0),
        ),
    ]
}

DEFAULT_OPS: tuple[str, ...] = tuple(name for name, op in OPS.items() if op.default)
"""The default search space: every op that makes sense for greyscale B-mode."""


def check_unit(what: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")


def get_op(name: str) -> Op:
    if name not in OPS:
        raise KeyError(f"unknown augmentation op {name!r} (known: {', '.join(OPS)})")
    return OPS[name]


def op_parameter(name: str, magnitude: float) -> float | None:
    """The documented parameter of op ``name`` at ``magnitude`` in [0, 1] (None for ops without one)."""
    return get_op(name).parameter(magnitude)


def build_op(name: str, magnitude: float, p: float = 1.0) -> A.BasicTransform:
    """Albumentations transform that applies op ``name`` at fixed ``magnitude`` with probability ``p``.

    Signed ops become ``OneOf([+direction, -direction])``, so the direction is drawn per image.
    Randomness comes from the enclosing Compose (see :func:`seeded`).
    """
    op = get_op(name)
    check_unit("p", p)
    value = op.parameter(magnitude)
    if not op.signed:
        transform = op.make(value, 1.0)
        transform.p = float(p)
        return transform
    return A.OneOf([op.make(value, 1.0), op.make(value, -1.0)], p=float(p))
