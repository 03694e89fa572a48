"""One B-mode image of one view: its scene, its tissue maps, the image, its mask and findings, scanner overlays.

:func:`render_view` draws the patient's anatomy and lesion (identical in all views of a patient)
and the view's probe settings, samples the tissue model on the view's pixel grid, forms the image
(:mod:`~skintumor.data.phantom.acoustics`), downsamples image and mask to the output size,
computes the findings true for this view and, on some views, burns in the scanner's overlays
(settings text, depth ticks, calipers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from skintumor.data.phantom.acoustics import (
    log_compress,
    posterior_effect_db,
    round_trip_transmission,
    speckle_envelope,
    time_gain,
)
from skintumor.data.phantom.anatomy import (
    Anatomy,
    clear_gel,
    displaced_fascia,
    draw_anatomy,
    layer_boundaries,
    layer_maps,
)
from skintumor.data.phantom.lesions import Lesion, draw_lesion, embed_lesion, lesion_frame

BASE_SIZE = 256  # images are formed on at least this grid, so speckle looks the same at any output size


@dataclass(frozen=True)
class ViewPlan:
    """One image to render: a view of one patient's lesion.

    ``variant`` is ``typical`` or the atypical presentation (``no_enhancement`` for cysts,
    ``no_calcification`` for pilomatricomas, ``hypoechoic`` for lipomas); ``small`` shrinks the lesion.
    """

    patient_id: str
    label: str
    variant: str
    small: bool
    patient_index: int
    view: int  # 1-based
    seed: int

    @property
    def name(self) -> str:
        return f"{self.patient_id}_v{self.view}"


# ----------------------------------------------------------------------------------------------
# The patient: layer thicknesses and the lesion, in millimetres (depth z below the skin, lateral x
# from the lesion centre). Identical in all views of one patient.
# ----------------------------------------------------------------------------------------------
def _patient_scene(plan: ViewPlan) -> tuple[Anatomy, Lesion]:
    rng = np.random.default_rng([plan.seed, 1, plan.patient_index])
    anatomy = draw_anatomy(rng)
    return anatomy, draw_lesion(rng, anatomy, plan.label, plan.variant, plan.small)


# ----------------------------------------------------------------------------------------------
# The view: probe position, depth setting, gain, compression and slight rotation.
# ----------------------------------------------------------------------------------------------
@dataclass
class View:
    width: float  # field of view, mm
    depth: float
    gel: float  # stand-off gel above the skin, mm
    compression: float  # < 1: the probe presses the tissue
    tilt: float  # rad, added to the lesion's orientation
    slope: float  # layers' slope, from the probe's tilt
    cross_section: float  # lateral scale of the lesion cut (rotation about the vertical axis)
    x_left: float  # lateral position of the left image edge, mm (lesion centre at 0)
    gain_db: float
    dynamic_range_db: float
    tgc_fraction: float  # share of the expected attenuation the TGC undoes
    noise: float  # electronic noise, relative to dermis echoes
    psf_scale: float  # point-spread function size (probe frequency and focus)
    annotate_text: bool
    annotate_calipers: bool


def _view_params(plan: ViewPlan, anatomy: Anatomy, lesion: Lesion, p_annotated: float) -> View:
    rng = np.random.default_rng([plan.seed, 2, plan.patient_index, plan.view])
    compression = rng.uniform(0.78, 1.0) if lesion.label == "lipoma" else rng.uniform(0.88, 1.0)
    gel = rng.uniform(0.0, 1.5) if rng.random() < 0.5 else 0.0
    cross = rng.uniform(0.85, 1.15)
    half = lesion.a * cross
    bottom = (lesion.z_center + lesion.b * 1.1) * compression + gel
    depth = float(np.clip(bottom + rng.uniform(3.0, 14.0), 10.0, 40.0))
    # linear probes show more width than depth; the image is square, so mm per pixel differ (<= 1.8x)
    width = float(np.clip(max(depth * rng.uniform(1.0, 1.5), 2 * half * rng.uniform(1.1, 1.7)), 12.0, 45.0))
    depth = max(depth, width / 1.8)
    # keep the lesion centre well inside; big lesions may leave the field laterally (as in real scans)
    centre = rng.uniform(0.3, 0.7) * width
    tilt = rng.normal(0, 0.07)
    return View(
        width=width,
        depth=depth,
        gel=gel,
        compression=compression,
        tilt=tilt,
        slope=np.tan(tilt) * rng.uniform(0.2, 0.6),
        cross_section=cross,
        x_left=-centre,
        gain_db=rng.uniform(-10, 10),
        dynamic_range_db=rng.uniform(38, 66),
        tgc_fraction=rng.uniform(0.35, 1.0),
        noise=10 ** rng.uniform(-2.6, -1.5),
        psf_scale=rng.uniform(0.8, 1.3),
        annotate_text=bool(rng.random() < p_annotated),
        annotate_calipers=bool(rng.random() < p_annotated) and half < 0.45 * width,
    )


# ----------------------------------------------------------------------------------------------
# Tissue maps on the pixel grid of one view.
# ----------------------------------------------------------------------------------------------
@dataclass
class TissueMaps:
    """Per-pixel maps of one view, all (n, n) with rows = depth."""

    echo: np.ndarray  # standard deviation of the random scatterers (dermis ~ 1)
    specular: np.ndarray  # coherent reflector amplitude (entry echo, fascia, walls, calcifications)
    alpha: np.ndarray  # attenuation, Np/mm one-way
    alpha_without_lesion: np.ndarray
    lesion: np.ndarray  # bool, the lesion
    junction: np.ndarray  # (n,) dermis-subcutis junction depth per column, tissue mm
    z: np.ndarray  # (n,) tissue depth of each row, mm (negative: gel)
    x: np.ndarray  # (n,) lateral position of each column, mm
    dz: float  # tissue mm per row


def tissue_maps(anatomy: Anatomy, lesion: Lesion, view: View, n: int) -> TissueMaps:
    """Sample the patient's tissue model on the ``n x n`` grid of ``view``."""
    dz = view.depth / n / view.compression
    z = ((np.arange(n) + 0.5) * view.depth / n - view.gel) / view.compression
    x = view.x_left + (np.arange(n) + 0.5) * view.width / n
    Z, X = np.meshgrid(z, x, indexing="ij")
    px_mm = dz  # profiles of thin lines are at least a pixel wide
    epi, junction, fascia = layer_boundaries(anatomy, x, view.slope * x)
    frame = lesion_frame(lesion, Z, X, view.cross_section, view.tilt)
    # mass effect: the fascia gives way below a lesion that reaches it
    fascia = displaced_fascia(fascia, Z, frame.inside, sigma=max(2.0, 0.25 * n * frame.a / view.width))
    echo, specular, alpha = layer_maps(anatomy, Z, X, epi, junction, fascia, px_mm)
    alpha_without = alpha.copy()
    echo, specular, alpha = embed_lesion(lesion, anatomy, frame, echo, specular, alpha, Z, X, epi, px_mm, view.width)
    echo, specular = clear_gel(echo, specular, Z, px_mm)
    return TissueMaps(echo, specular, alpha, alpha_without, frame.inside, junction, z, x, dz)


# ----------------------------------------------------------------------------------------------
# The image, its mask and its findings.
# ----------------------------------------------------------------------------------------------
@dataclass
class RenderedView:
    image: np.ndarray  # (size, size) uint8
    mask: np.ndarray  # (size, size) bool
    findings: dict


def _findings(lesion: Lesion, maps: TissueMaps) -> dict:
    effect = posterior_effect_db(maps.alpha, maps.alpha_without_lesion, maps.lesion, maps.dz)
    cols = np.flatnonzero(maps.lesion.any(axis=0))
    centre = cols[len(cols) // 2]
    rows = np.flatnonzero(maps.lesion[:, centre])
    top, bottom = maps.z[rows[0]], maps.z[rows[-1]]
    junction = maps.junction[centre]
    if bottom <= junction + 0.3:
        layer = "dermis"
    elif top >= junction - 0.3:
        layer = "subcutis"
    else:
        layer = "dermis-subcutis"
    foci_visible = False
    if len(lesion.foci):
        foci_visible = bool((maps.specular * maps.lesion).max() > 1.0)
    return {
        "posterior_enhancement": int(np.median(effect) >= 3.0),
        "posterior_shadowing": int(np.mean(effect <= -6.0) >= 0.15),
        "calcification": int(foci_visible),
        "internal_striations": int(len(lesion.striations) > 0),
        "rim": int(lesion.rim),
        "punctum": int(lesion.punctum),
        "layer": layer,
    }


def _downsample(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float64)


def render_view(
    plan: ViewPlan, image_size: int = 256, p_annotated: float = 0.3, caliper_readout: bool = False
) -> RenderedView:
    """Form one B-mode image of ``plan``: (image uint8, lesion mask bool, findings true for it).

    ``caliper_readout``: calipers also print the lesion's width in mm, a size confounder a model can read.
    """
    anatomy, lesion = _patient_scene(plan)
    view = _view_params(plan, anatomy, lesion, p_annotated)
    n = max(int(image_size), BASE_SIZE)
    maps = tissue_maps(anatomy, lesion, view, n)
    rng = np.random.default_rng([plan.seed, 3, plan.patient_index, plan.view])
    transmission = round_trip_transmission(maps.alpha, maps.dz)
    envelope = speckle_envelope(
        maps.echo * transmission,
        rng,
        specular=maps.specular * transmission,
        noise=view.noise,
        scale=view.psf_scale * n / BASE_SIZE,
    )
    depth_mm = np.clip(maps.z, 0, None)[:, None]
    envelope *= time_gain(depth_mm, view.tgc_fraction)  # TGC: undoes only part of it
    grey = _downsample(log_compress(envelope, view.gain_db, view.dynamic_range_db), image_size)
    image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    mask = _downsample(maps.lesion.astype(np.float64), image_size) >= 0.5
    if view.annotate_text or view.annotate_calipers:
        image = _burn_in(image, mask, view, rng, caliper_readout)
    return RenderedView(image, mask, _findings(lesion, maps))


def _burn_in(image: np.ndarray, mask: np.ndarray, view: View, rng, caliper_readout: bool) -> np.ndarray:
    """Scanner-screen overlays: settings text, depth ticks, calipers across the lesion (and their readout)."""
    size = image.shape[0]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(6, size // 22))
    white = int(rng.integers(200, 256))
    if view.annotate_text:
        freq = int(rng.choice([12, 15, 18, 22]))
        draw.text((3, 2), f"L{freq + 4}-{freq - 8}  {freq}MHz", fill=white, font=font)
        draw.text(
            (3, size - size // 12), f"D {view.depth / 10:.1f}cm  G {50 + int(view.gain_db * 3)}%", fill=white, font=font
        )
        step = 5.0 * size / view.depth  # a tick every 5 mm
        for k in range(1, int(view.depth // 5) + 1):
            y = int(round(k * step))
            draw.line([(size - 4, y), (size - 1, y)], fill=white)
    if view.annotate_calipers and mask.any():
        rows, cols = np.nonzero(mask)
        y = int(np.median(rows))
        left, right = int(cols.min()), int(cols.max())
        arm = max(2, size // 64)
        for cx in (left, right):
            draw.line([(cx - arm, y), (cx + arm, y)], fill=white)
            draw.line([(cx, y - arm), (cx, y + arm)], fill=white)
        for cx in range(left + 2 * arm, right - arm, 3 * arm):  # dotted measuring line
            draw.point((cx, y), fill=white)
        if caliper_readout:
            width_mm = (right - left) * view.width / size
            draw.text((size // 2, size - size // 6), f"D1 {width_mm:.1f}mm", fill=white, font=font)
    return np.asarray(pil)
