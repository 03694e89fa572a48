"""Synthetic sonographic phantom of three benign skin tumours: the embedded default data.

Every image is *formed*, not drawn: a tissue model (echogenicity, specular reflectors and
attenuation in millimetres) is sampled on the pixel grid of one probe position, random scatterers
are weighted by it, the result is convolved with an ultrasound point-spread function in the RF
domain (Gaussian-modulated cosine along depth, Gaussian laterally), the envelope is detected with
a Hilbert transform, a time-gain compensation that only partly undoes the attenuation is applied,
and the envelope is log-compressed to 8 bit. Speckle is therefore fully developed (Rayleigh) and
spatially correlated, and posterior enhancement / shadowing arise from the attenuation map.

Classes (in label order): ``cyst`` (epidermal cyst), ``lipoma``, ``pilomatricoma``.
Atypical presentations (cyst without enhancement, pilomatricoma without calcification,
hypoechoic lipoma, small lesions) come in configurable proportions.

Public API::

    plan_phantom(...)            -> list[ViewPlan]    patients and their views, nothing rendered
    render_view(plan, size)      -> RenderedView      one image, its mask and its true findings
    speckle_envelope(amp, rng)   -> HxW envelope      the RF + Hilbert step (used by tests)
    generate_phantom(out_dir)    -> Manifest          images/, masks/, manifest.csv, phantom.json
    phantom_manifest(root)       -> Manifest          cached data source (registered as "phantom")
    python -m skintumor.data.phantom --out DIR        the same from the shell
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage, signal

from skintumor.data.manifest import DataError, Manifest

CLASSES = ("cyst", "lipoma", "pilomatricoma")
FINDINGS = ("posterior_enhancement", "posterior_shadowing", "calcification", "internal_striations",
            "rim", "punctum", "layer")
MAX_VIEWS = 5
BASE_SIZE = 256  # images are formed on at least this grid, so speckle looks the same at any output size
PHANTOM_VERSION = 1  # bump when the images change: it is part of the cache key
MARKER = "phantom.json"  # marks a folder as phantom output (the CLI only overwrites such folders)

# attenuation (one-way amplitude, Np/mm) of the tissues; round trip doubles it
ALPHA_DERMIS, ALPHA_FAT, ALPHA_MUSCLE = 0.11, 0.09, 0.11
ALPHA_REF = 0.09  # what the time-gain compensation assumes; times tgc_fraction < 1 it stays below every tissue's


# ----------------------------------------------------------------------------------------------
# The plan: which patients, which class and presentation, how many views. Nothing is rendered.
# ----------------------------------------------------------------------------------------------
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


def plan_phantom(n_patients=(149, 74, 32), n_images: int = 698, seed: int = 0,
                 p_cyst_no_enhancement: float = 0.15, p_pilomatricoma_no_calcification: float = 0.2,
                 p_lipoma_hypoechoic: float = 0.2, p_small: float = 0.1) -> list[ViewPlan]:
    """Patients per class (in :data:`CLASSES` order), presentations and 1..5 views each.

    Patients are shuffled so their ids say nothing about the class; every patient gets one view,
    the remaining ``n_images - sum(n_patients)`` views go to random patients (at most 5 each).
    """
    counts = [int(n) for n in n_patients]
    if len(counts) != len(CLASSES) or min(counts) < 1:
        raise DataError(f"phantom: n_patients needs {len(CLASSES)} positive counts "
                        f"({', '.join(CLASSES)}), got {list(n_patients)}")
    total = sum(counts)
    if not total <= n_images <= MAX_VIEWS * total:
        raise DataError(f"phantom: n_images={n_images} impossible for {total} patients "
                        f"with 1..{MAX_VIEWS} views each")
    for name, p in (("p_cyst_no_enhancement", p_cyst_no_enhancement), ("p_small", p_small),
                    ("p_pilomatricoma_no_calcification", p_pilomatricoma_no_calcification),
                    ("p_lipoma_hypoechoic", p_lipoma_hypoechoic)):
        if not 0.0 <= p <= 1.0:
            raise DataError(f"phantom: {name} must be a proportion in [0, 1], got {p}")
    rng = np.random.default_rng([seed, 0])
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(labels)
    views = np.ones(total, dtype=int)
    for _ in range(n_images - total):
        views[rng.choice(np.flatnonzero(views < MAX_VIEWS))] += 1
    atypical = {"cyst": ("no_enhancement", p_cyst_no_enhancement),
                "lipoma": ("hypoechoic", p_lipoma_hypoechoic),
                "pilomatricoma": ("no_calcification", p_pilomatricoma_no_calcification)}
    plans = []
    width = len(str(total))
    for i, label_index in enumerate(labels):
        label = CLASSES[label_index]
        name, p = atypical[label]
        u_variant, u_small = rng.random(2)  # always two draws, so changing a proportion moves nothing else
        variant = name if u_variant < p else "typical"
        patient_id = f"P{i + 1:0{width}d}"
        for v in range(1, views[i] + 1):
            plans.append(ViewPlan(patient_id, label, variant, bool(u_small < p_small), i, v, int(seed)))
    return plans


# ----------------------------------------------------------------------------------------------
# The patient: layer thicknesses and the lesion, in millimetres (depth z below the skin, lateral x
# from the lesion centre). Identical in all views of one patient.
# ----------------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    epidermis: float  # thickness, mm
    dermis: float
    fat: float
    undulation: np.ndarray  # (3 boundaries, 3 waves, [amplitude mm, wavelength mm, phase])
    dermis_echo: float
    fat_echo: float
    muscle_echo: float
    septa: np.ndarray  # (n, 6): depth fraction in fat, slope, amplitude, wavelength, x start, length
    muscle_angle: float
    muscle_spacing: float


@dataclass
class Lesion:
    label: str
    variant: str
    a: float  # lateral semi-axis, mm
    b: float  # depth semi-axis, mm
    z_center: float
    tilt: float  # rad
    harmonics: np.ndarray  # (k, 2): relative amplitude, phase of the boundary's radius
    echo: float  # mean echogenicity inside (dermis = 1)
    alpha: float  # attenuation inside, Np/mm
    texture: np.ndarray  # 12x12 random field in lesion coordinates: heterogeneity
    debris: np.ndarray  # 64x64 random field in lesion coordinates: fine internal echoes
    foci: np.ndarray  # (n, 3) calcifications: u, v, radius mm
    striations: np.ndarray  # (n, 5) lipoma lines: v, u start, u end, curvature, amplitude
    punctum: bool
    punctum_u: float
    rim: bool
    edge_shadows: bool
    capsule_phase: float  # where a lipoma's partial capsule is visible


def _patient_scene(plan: ViewPlan) -> tuple[Anatomy, Lesion]:
    rng = np.random.default_rng([plan.seed, 1, plan.patient_index])
    und = np.stack([np.column_stack([rng.uniform(0, amp, 3), rng.uniform(8, 40, 3), rng.uniform(0, 2 * np.pi, 3)])
                    for amp in (0.05, 0.25, 0.8)])
    n_septa = rng.integers(4, 12)
    septa = np.column_stack([rng.uniform(0.1, 0.95, n_septa), rng.normal(0, 0.12, n_septa),
                             rng.uniform(0, 0.8, n_septa), rng.uniform(6, 25, n_septa),
                             rng.uniform(-25, 15, n_septa), rng.uniform(4, 25, n_septa)])
    anatomy = Anatomy(epidermis=rng.uniform(0.1, 0.3), dermis=rng.uniform(1.0, 3.2), fat=rng.uniform(2.5, 14),
                      undulation=und, dermis_echo=rng.uniform(0.7, 1.3), fat_echo=rng.uniform(0.12, 0.35),
                      muscle_echo=rng.uniform(0.2, 0.45), septa=septa,
                      muscle_angle=rng.normal(0, 0.15), muscle_spacing=rng.uniform(0.9, 2.0))
    label, variant = plan.label, plan.variant
    top_dermis = anatomy.epidermis + anatomy.dermis  # dermis-subcutis junction
    # lesion size and place per class (semi-axes in mm)
    if label == "cyst":
        a = rng.uniform(2.5, 9.0)
        b = a * rng.uniform(0.6, 1.0)
    elif label == "lipoma":
        a = rng.uniform(5.0, 16.0)
        b = a * rng.uniform(0.25, 0.5)
    else:
        a = rng.uniform(2.5, 7.0)
        b = a * rng.uniform(0.7, 1.0)
    if plan.small:
        scale = rng.uniform(0.35, 0.55)
        a, b = a * scale, b * scale
    if label == "cyst":
        z = top_dermis + rng.uniform(-0.5, 1.3) * b
    elif label == "lipoma":
        z = top_dermis + rng.uniform(0.4, 2.5) + b
    else:
        z = top_dermis + rng.uniform(-0.35, 0.35) * b
    z = max(z, anatomy.epidermis + 0.3 + b)  # never through the epidermis
    n_harm = 4
    harmonics = np.column_stack([rng.uniform(0, 0.05 if label != "lipoma" else 0.07, n_harm) / np.arange(1, n_harm + 1),
                                 rng.uniform(0, 2 * np.pi, n_harm)])
    texture = rng.normal(0, 1, (12, 12))
    debris = rng.exponential(1, (64, 64))
    foci = np.zeros((0, 3))
    striations = np.zeros((0, 5))
    punctum, rim, edge_shadows = False, False, False
    if label == "cyst":
        typical = variant == "typical"
        echo = rng.uniform(0.02, 0.08) if typical else rng.uniform(0.12, 0.4)
        alpha = rng.uniform(0.0, 0.01) if typical else ALPHA_FAT * rng.uniform(0.9, 1.2)
        punctum = bool(rng.random() < 0.4)
        edge_shadows = typical and bool(rng.random() < 0.85)
    elif label == "lipoma":
        echo = anatomy.fat_echo * (rng.uniform(1.0, 1.8) if variant == "typical" else rng.uniform(0.4, 0.7))
        alpha = ALPHA_FAT * rng.uniform(0.9, 1.1)
        n_lines = rng.integers(3, 9) if variant == "typical" else rng.integers(0, 3)
        v = rng.uniform(-0.75, 0.75, n_lines)
        start = rng.uniform(-0.9, 0.3, n_lines)
        striations = np.column_stack([v, start, np.minimum(start + rng.uniform(0.4, 1.2, n_lines), 0.9),
                                      rng.normal(0, 0.15, n_lines), rng.uniform(2.0, 4.5, n_lines) * anatomy.fat_echo])
    else:
        echo = anatomy.dermis_echo * rng.uniform(0.8, 2.2)
        alpha = ALPHA_FAT * rng.uniform(0.95, 1.15)
        rim = bool(rng.random() < (0.9 if variant == "typical" else 0.7))
        if variant == "typical":
            n_foci = rng.integers(4, 15)
            centre = rng.uniform(-0.25, 0.25, 2)
            uv = centre + rng.normal(0, 0.35, (n_foci, 2))
            uv *= np.minimum(1.0, 0.65 / np.maximum(np.hypot(uv[:, 0], uv[:, 1]), 1e-6))[:, None]
            foci = np.column_stack([uv, rng.uniform(0.2, 0.6, n_foci)])
    lesion = Lesion(label, variant, a, b, z, rng.normal(0, 0.08), harmonics, echo, alpha, texture, debris,
                    foci, striations, punctum, rng.uniform(-0.4, 0.4), rim, edge_shadows, rng.uniform(0, 2 * np.pi))
    return anatomy, lesion


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
    return View(width=width, depth=depth, gel=gel, compression=compression, tilt=tilt,
                slope=np.tan(tilt) * rng.uniform(0.2, 0.6), cross_section=cross, x_left=-centre,
                gain_db=rng.uniform(-7, 7), dynamic_range_db=rng.uniform(42, 62),
                tgc_fraction=rng.uniform(0.5, 0.9), noise=10 ** rng.uniform(-2.6, -1.8),
                annotate_text=bool(rng.random() < p_annotated),
                annotate_calipers=bool(rng.random() < p_annotated) and half < 0.45 * width)


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


def _wave(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum of sinusoids (rows of amplitude, wavelength, phase) at ``x``: smooth layer undulation."""
    return sum(a * np.sin(2 * np.pi * x / lam + ph) for a, lam, ph in params)


def _smooth_step(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _field(grid: np.ndarray, u: np.ndarray, v: np.ndarray, extent: float = 1.3, order: int = 3) -> np.ndarray:
    """Sample a patient's random grid at lesion coordinates (u, v) in [-extent, extent]."""
    n = grid.shape[0]
    rows = (v + extent) / (2 * extent) * (n - 1)
    cols = (u + extent) / (2 * extent) * (n - 1)
    return ndimage.map_coordinates(grid, [rows.ravel(), cols.ravel()], order=order, mode="nearest").reshape(u.shape)


def tissue_maps(anatomy: Anatomy, lesion: Lesion, view: View, n: int) -> TissueMaps:
    """Sample the patient's tissue model on the ``n x n`` grid of ``view``."""
    dz = view.depth / n / view.compression
    z = ((np.arange(n) + 0.5) * view.depth / n - view.gel) / view.compression
    x = view.x_left + (np.arange(n) + 0.5) * view.width / n
    Z, X = np.meshgrid(z, x, indexing="ij")
    px_mm = dz  # profiles of thin lines are at least a pixel wide
    slope = view.slope * x
    epi = anatomy.epidermis + _wave(anatomy.undulation[0], x)
    junction = epi + anatomy.dermis + _wave(anatomy.undulation[1], x) + slope
    fascia0 = junction + anatomy.fat + _wave(anatomy.undulation[2], x) + slope

    # lesion coordinates: rotate into the lesion frame, scale by the semi-axes
    a, b = lesion.a * view.cross_section, lesion.b
    cos_t, sin_t = np.cos(lesion.tilt + view.tilt), np.sin(lesion.tilt + view.tilt)
    dzl = Z - lesion.z_center
    xr, zr = cos_t * X + sin_t * dzl, -sin_t * X + cos_t * dzl
    u, v = xr / a, zr / b
    phi = np.arctan2(v, u)
    radius = 1 + sum(amp * np.cos((k + 1) * phi + ph) for k, (amp, ph) in enumerate(lesion.harmonics))
    rho = np.hypot(u, v) / radius  # < 1 inside the lesion
    inside = rho < 1.0

    # mass effect: the fascia gives way below a lesion that reaches it
    bottom = np.where(inside.any(axis=0), np.where(inside, Z, -np.inf).max(axis=0), -np.inf)
    push = np.clip(bottom + 1.0 - fascia0, 0, None)
    fascia = fascia0 + ndimage.gaussian_filter1d(push, sigma=max(2.0, 0.25 * n * a / view.width), mode="nearest")
    fascia = np.maximum(fascia, fascia0)

    epi_g, jun_g, fas_g = epi[None, :], junction[None, :], fascia[None, :]
    echo = np.zeros((n, n))
    specular = np.zeros((n, n))
    alpha = np.zeros((n, n))
    skin = Z >= 0
    in_epi = skin & (Z < epi_g)
    in_dermis = (Z >= epi_g) & (Z < jun_g)
    in_fat = (Z >= jun_g) & (Z < fas_g)
    in_muscle = Z >= fas_g
    dermis_texture = 1 + 0.25 * np.sin(2 * np.pi * X / 3.7 + 1.3 * Z) * np.sin(2 * np.pi * Z / 0.9)
    echo[in_epi] = 1.6 * anatomy.dermis_echo
    echo[in_dermis] = (anatomy.dermis_echo * dermis_texture)[in_dermis]
    echo[in_fat] = anatomy.fat_echo
    alpha[in_epi | in_dermis] = ALPHA_DERMIS
    alpha[in_fat] = ALPHA_FAT
    alpha[in_muscle] = ALPHA_MUSCLE
    # echogenic septa in the fat: thin curved lines, segment by segment
    fat_thickness = fas_g - jun_g
    for frac, sl, amp, lam, x0, length in anatomy.septa:
        line = jun_g + frac * fat_thickness + sl * (X - x0) + amp * np.sin(2 * np.pi * X / lam)
        seg = _smooth_step((X - x0) / 1.5) * _smooth_step((x0 + length - X) / 1.5)
        profile = np.exp(-0.5 * ((Z - line) / max(0.1, px_mm)) ** 2) * seg * in_fat
        echo += 0.9 * anatomy.dermis_echo * profile
    # striated muscle: echogenic perimysium lines, slightly oblique
    phase = 2 * np.pi * (Z * np.cos(anatomy.muscle_angle) + X * np.sin(anatomy.muscle_angle)) / anatomy.muscle_spacing
    wobble = 1.5 * np.sin(2 * np.pi * X / 9.0 + anatomy.muscle_spacing * 7) + 0.8 * np.sin(2 * np.pi * X / 3.1 + Z)
    fibres = anatomy.muscle_echo * (0.7 + 1.6 * ((1 + np.cos(phase + wobble)) / 2) ** 6)
    echo = np.where(in_muscle, fibres, echo)
    # specular interfaces: skin entry echo and the fascia
    line_w = max(0.6 * px_mm, 0.03)
    specular += 4.0 * np.exp(-0.5 * (Z / line_w) ** 2)
    specular += 2.5 * np.exp(-0.5 * ((Z - fas_g) / line_w) ** 2)
    echo += 1.2 * np.exp(-0.5 * ((Z - fas_g) / max(0.15, px_mm)) ** 2)
    alpha_without = alpha.copy()

    # the lesion
    texture = _field(lesion.texture, u, v)
    if lesion.label == "cyst":
        debris = _field(lesion.debris, u, v, order=1)
        inner = lesion.echo * (0.6 + 0.4 * texture.clip(-1, 2)) * (0.5 + 0.25 * debris ** 2)
        if lesion.variant != "typical":  # ruptured/inflamed: heterogeneous, echo-rich content
            inner = lesion.echo * (1 + 0.6 * texture).clip(0.2, None)
        echo = np.where(inside, inner, echo)
        alpha = np.where(inside, lesion.alpha, alpha)
        # thin echogenic wall, specular where the beam meets it head-on (top and bottom)
        wall = np.exp(-0.5 * ((rho - 1) * b / max(0.08, px_mm)) ** 2)
        head_on = np.abs(np.sin(phi)) ** 4
        specular += 1.5 * wall * head_on
        echo += 0.6 * anatomy.dermis_echo * wall * (1 - head_on)
        if lesion.edge_shadows:  # refraction at the tangential lateral walls: thin shadows below them
            lateral = (np.abs(np.cos(phi)) > 0.93) & (np.abs(rho - 1) * min(a, b) < max(0.2, 1.2 * px_mm))
            alpha = np.where(lateral, alpha + 0.6, alpha)
        if lesion.punctum:  # tract from the cyst to the epidermis
            xp = lesion.punctum_u * a
            top = lesion.z_center - b * 0.8
            tract = (np.abs(X - xp) < max(0.25, 1.2 * view.width / n)) & (Z > epi_g) & (Z < top) & ~inside
            echo = np.where(tract, 0.08 * anatomy.dermis_echo, echo)
    elif lesion.label == "lipoma":
        blend = _smooth_step((1.05 - rho) / 0.2)  # subtle margins: the lesion fades into the fat
        inner = lesion.echo * (1 + 0.15 * texture)
        for vk, u0, u1, curv, amp in lesion.striations:
            dist = (v - vk - curv * u ** 2) * b
            seg = _smooth_step((u - u0) / 0.15) * _smooth_step((u1 - u) / 0.15)
            inner = inner + amp * np.exp(-0.5 * (dist / max(0.1, px_mm)) ** 2) * seg
        echo = blend * inner + (1 - blend) * echo
        alpha = np.where(inside, lesion.alpha, alpha)
        capsule = np.exp(-0.5 * ((rho - 1) * b / max(0.08, px_mm)) ** 2) * (np.cos(2 * phi + lesion.capsule_phase) > 0.3)
        echo += 0.4 * anatomy.fat_echo * capsule
    else:
        inner = lesion.echo * np.exp(0.6 * texture)  # heterogeneous, mostly hyperechoic
        if lesion.rim:  # hypoechoic rim
            inner = np.where(rho > 0.82, 0.06 * anatomy.dermis_echo, inner)
        echo = np.where(inside, inner, echo)
        alpha = np.where(inside, lesion.alpha, alpha)
        for fu, fv, r_mm in lesion.foci:  # calcifications: bright, strongly attenuating
            d_mm = np.hypot((u - fu) * a, (v - fv) * b)
            focus = d_mm < max(r_mm, 0.7 * px_mm)
            specular += 2.5 * np.exp(-0.5 * (d_mm / max(r_mm, px_mm)) ** 2) * focus
            echo = np.where(focus, 3.0 * anatomy.dermis_echo, echo)
            alpha = np.where(focus, alpha + 1.6, alpha)
    echo = np.where(skin, echo, 0.0)
    specular = np.where(Z >= -line_w * 3, specular, 0.0)
    return TissueMaps(echo, specular, alpha, alpha_without, inside, junction, z, x, dz)


# ----------------------------------------------------------------------------------------------
# Image formation: RF, envelope, TGC, log compression.
# ----------------------------------------------------------------------------------------------
def psf_kernels(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Separable RF point-spread function in pixels: (axial, lateral) 1-D kernels.

    Axial: Gaussian-modulated cosine (period 4 px, sigma 2.4 px) with zero mean; lateral: Gaussian
    (sigma 2.8 px). The band stays clear of 0 and Nyquist (< -55 dB there), so the Hilbert envelope
    has no ringing tails even below strong reflectors.
    """
    sigma_z, sigma_x, period = 2.4 * scale, 2.8 * scale, 4.0 * scale
    tz = np.arange(-int(np.ceil(4 * sigma_z)), int(np.ceil(4 * sigma_z)) + 1)
    tx = np.arange(-int(np.ceil(3 * sigma_x)), int(np.ceil(3 * sigma_x)) + 1)
    gauss = np.exp(-0.5 * (tz / sigma_z) ** 2)
    carrier = np.cos(2 * np.pi * tz / period)
    # remove the small DC response a short pulse has, so smooth reflectors give no RF (a real transducer has none)
    axial = gauss * (carrier - np.sum(gauss * carrier) / np.sum(gauss))
    lateral = np.exp(-0.5 * (tx / sigma_x) ** 2)
    return axial, lateral


def speckle_envelope(amplitude: np.ndarray, rng: np.random.Generator, specular: np.ndarray | None = None,
                     noise: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Envelope of the RF echo of random scatterers.

    Args:
        amplitude: (H, W) standard deviation of the scatterers (echogenicity x transmission).
        rng: random generator for scatterers and noise.
        specular: optional (H, W) coherent reflector amplitude, added with a fixed sign.
        noise: electronic noise, added after the tissue (not attenuated).
        scale: PSF size factor (1 at the 256 px base grid).

    Returns:
        (H, W) envelope, normalised so unit-amplitude scatterers have an RMS envelope of 1. In a
        homogeneous region it is Rayleigh distributed: mean / std = sqrt(pi / (4 - pi)) = 1.91.
    """
    axial, lateral = psf_kernels(scale)
    scatterers = amplitude * rng.standard_normal(amplitude.shape)
    if specular is not None:
        scatterers = scatterers + specular
    if noise:
        scatterers = scatterers + noise * rng.standard_normal(amplitude.shape)
    # pad along depth: a reflector at the top row keeps its whole pulse (a cut pulse would ring
    # through the Hilbert transform), and the FFT's wrap-around stays away from the image
    pad = len(axial)
    rf = ndimage.convolve1d(np.pad(scatterers, ((pad, pad), (0, 0))), axial, axis=0, mode="constant")
    rf = ndimage.convolve1d(rf, lateral, axis=1, mode="nearest")
    analytic = signal.hilbert(rf, axis=0)[pad:-pad]
    norm = np.sqrt(2 * np.sum(axial ** 2) * np.sum(lateral ** 2))
    return np.abs(analytic) / norm


def log_compress(envelope: np.ndarray, gain_db: float = 0.0, dynamic_range_db: float = 50.0,
                 top_db: float = 14.0) -> np.ndarray:
    """Envelope -> grey levels in [0, 255] (float): ``top_db + gain`` is white, ``dynamic_range`` below is black."""
    db = 20 * np.log10(np.maximum(envelope, 1e-12)) + gain_db
    return np.clip((db - (top_db - dynamic_range_db)) / dynamic_range_db * 255.0, 0, 255)


@dataclass
class RenderedView:
    image: np.ndarray  # (size, size) uint8
    mask: np.ndarray  # (size, size) bool
    findings: dict


def _posterior_effect_db(maps: TissueMaps) -> np.ndarray:
    """Round-trip change (dB) the lesion makes to echoes below it, per lesion column, central columns only."""
    heights = maps.lesion.sum(axis=0)
    central = heights >= 0.5 * heights.max()
    delta = (maps.alpha - maps.alpha_without_lesion).sum(axis=0) * maps.dz
    return (-2 * delta * 20 / np.log(10))[central]


def _findings(lesion: Lesion, maps: TissueMaps) -> dict:
    effect = _posterior_effect_db(maps)
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


def render_view(plan: ViewPlan, image_size: int = 256, p_annotated: float = 0.3) -> RenderedView:
    """Form one B-mode image of ``plan``: (image uint8, lesion mask bool, findings true for it)."""
    anatomy, lesion = _patient_scene(plan)
    view = _view_params(plan, anatomy, lesion, p_annotated)
    n = max(int(image_size), BASE_SIZE)
    maps = tissue_maps(anatomy, lesion, view, n)
    rng = np.random.default_rng([plan.seed, 3, plan.patient_index, plan.view])
    # round-trip transmission to each depth (exclusive: a reflector is not shadowed by itself)
    cumulative = np.cumsum(maps.alpha, axis=0) * maps.dz - maps.alpha * maps.dz
    transmission = np.exp(-2 * cumulative)
    envelope = speckle_envelope(maps.echo * transmission, rng, specular=maps.specular * transmission,
                                noise=view.noise, scale=n / BASE_SIZE)
    depth_mm = np.clip(maps.z, 0, None)[:, None]
    envelope *= np.exp(2 * view.tgc_fraction * ALPHA_REF * depth_mm)  # TGC: undoes only part of it
    grey = _downsample(log_compress(envelope, view.gain_db, view.dynamic_range_db), image_size)
    image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    mask = _downsample(maps.lesion.astype(np.float64), image_size) >= 0.5
    if view.annotate_text or view.annotate_calipers:
        image = _burn_in(image, mask, view, lesion, rng)
    return RenderedView(image, mask, _findings(lesion, maps))


def _burn_in(image: np.ndarray, mask: np.ndarray, view: View, lesion: Lesion, rng) -> np.ndarray:
    """Scanner-screen overlays: settings text, depth ticks and calipers across the lesion."""
    size = image.shape[0]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(6, size // 22))
    white = int(rng.integers(200, 256))
    if view.annotate_text:
        freq = int(rng.choice([12, 15, 18, 22]))
        draw.text((3, 2), f"L{freq + 4}-{freq - 8}  {freq}MHz", fill=white, font=font)
        draw.text((3, size - size // 12), f"D {view.depth / 10:.1f}cm  G {50 + int(view.gain_db * 3)}%",
                  fill=white, font=font)
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
        width_mm = (right - left) * view.width / size
        draw.text((size // 2, size - size // 6), f"D1 {width_mm:.1f}mm", fill=white, font=font)
    return np.asarray(pil)


# ----------------------------------------------------------------------------------------------
# Writing a data set, caching it, the CLI.
# ----------------------------------------------------------------------------------------------
def _parameters(n_patients, n_images, image_size, seed, p_cyst_no_enhancement, p_pilomatricoma_no_calcification,
                p_lipoma_hypoechoic, p_small, p_annotated) -> dict:
    return {"version": PHANTOM_VERSION, "n_patients": [int(n) for n in n_patients], "n_images": int(n_images),
            "image_size": int(image_size), "seed": int(seed),
            "p_cyst_no_enhancement": float(p_cyst_no_enhancement),
            "p_pilomatricoma_no_calcification": float(p_pilomatricoma_no_calcification),
            "p_lipoma_hypoechoic": float(p_lipoma_hypoechoic), "p_small": float(p_small),
            "p_annotated": float(p_annotated)}


def _render_and_write(plan: ViewPlan, out_dir: Path, image_size: int, p_annotated: float) -> dict:
    view = render_view(plan, image_size, p_annotated)
    path, mask_path = f"images/{plan.name}.png", f"masks/{plan.name}.png"
    Image.fromarray(view.image).save(out_dir / path)
    Image.fromarray(view.mask.astype(np.uint8) * 255).save(out_dir / mask_path)
    return {"path": path, "label": plan.label, "patient_id": plan.patient_id, "group_id": plan.patient_id,
            "mask_path": mask_path, "view": plan.view, "variant": plan.variant, "small": int(plan.small),
            **view.findings}


def _is_phantom_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def generate_phantom(out_dir: str | Path, n_patients=(149, 74, 32), n_images: int = 698, image_size: int = 256,
                     seed: int = 0, p_cyst_no_enhancement: float = 0.15,
                     p_pilomatricoma_no_calcification: float = 0.2, p_lipoma_hypoechoic: float = 0.2,
                     p_small: float = 0.1, p_annotated: float = 0.3, n_jobs: int = 2,
                     progress: bool = True) -> Manifest:
    """Render the phantom into ``out_dir``: ``images/``, ``masks/``, ``manifest.csv``, ``phantom.json``.

    Refuses a non-empty ``out_dir`` that is not phantom output; the output is byte-identical for
    the same parameters whatever ``n_jobs`` is (every view seeds its own generator).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_phantom_dir(out_dir):
        raise DataError(f"{out_dir}: folder is not empty and is not phantom output; choose an empty folder")
    if int(image_size) < 32:
        raise DataError(f"phantom: image_size must be at least 32 px, got {image_size}")
    params = _parameters(n_patients, n_images, image_size, seed, p_cyst_no_enhancement,
                         p_pilomatricoma_no_calcification, p_lipoma_hypoechoic, p_small, p_annotated)
    if not 0.0 <= p_annotated <= 1.0:
        raise DataError(f"phantom: p_annotated must be a proportion in [0, 1], got {p_annotated}")
    plans = plan_phantom(n_patients, n_images, seed, p_cyst_no_enhancement, p_pilomatricoma_no_calcification,
                         p_lipoma_hypoechoic, p_small)
    if _is_phantom_dir(out_dir):  # regenerate our own output only: remove what we wrote before
        for name in ("images", "masks"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("manifest.csv", MARKER):
            (out_dir / name).unlink(missing_ok=True)
    for name in ("images", "masks"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    rows = _run_all(plans, out_dir, int(image_size), float(p_annotated), n_jobs, progress)
    manifest = Manifest(pd.DataFrame(rows), out_dir, list(CLASSES))
    manifest.to_csv(out_dir / "manifest.csv")
    (out_dir / MARKER).write_text(json.dumps(params, indent=1) + "\n")
    return manifest


def _run_all(plans, out_dir, image_size, p_annotated, n_jobs, progress) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("phantom"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("render", total=len(plans))
        if n_jobs == 1:
            results = (_render_and_write(p, out_dir, image_size, p_annotated) for p in plans)
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=8)(
                delayed(_render_and_write)(p, out_dir, image_size, p_annotated) for p in plans)
        rows = []
        for row in results:  # results arrive in plan order, so the manifest order is fixed
            rows.append(row)
            bar.advance(task)
    return rows


def phantom_key(**params) -> str:
    """Short hash of the generation parameters (and the phantom version): the cache folder's name."""
    text = json.dumps(_parameters(**params), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def phantom_manifest(root: str | Path = "outputs/phantom", n_patients=(149, 74, 32), n_images: int = 698,
                     image_size: int = 256, seed: int = 0, p_cyst_no_enhancement: float = 0.15,
                     p_pilomatricoma_no_calcification: float = 0.2, p_lipoma_hypoechoic: float = 0.2,
                     p_small: float = 0.1, p_annotated: float = 0.3, n_jobs: int = 2,
                     progress: bool = True) -> Manifest:
    """The phantom as a data source: generated once into ``root/<hash of the parameters>/``, then reused.

    Generation writes to a temporary folder that is renamed when complete, so an interrupted run
    never leaves a half-written cache.
    """
    params = dict(n_patients=n_patients, n_images=n_images, image_size=image_size, seed=seed,
                  p_cyst_no_enhancement=p_cyst_no_enhancement,
                  p_pilomatricoma_no_calcification=p_pilomatricoma_no_calcification,
                  p_lipoma_hypoechoic=p_lipoma_hypoechoic, p_small=p_small, p_annotated=p_annotated)
    root = Path(root).expanduser()
    target = root / phantom_key(**params)
    if not (target / "manifest.csv").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            generate_phantom(tmp, n_jobs=n_jobs, progress=progress, **params)
            try:
                os.rename(tmp, target)
            except OSError:  # another process finished first: its copy is identical
                if not (target / "manifest.csv").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.from_csv(target / "manifest.csv", classes=list(CLASSES))


def plot_examples(images: list[tuple[str, np.ndarray, np.ndarray, str]], path: str | Path,
                  per_class: int = 5) -> Path:
    """Grid figure, one row per class: images with their mask outline. ``images``: (label, image, mask, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(1.9 * per_class, 2.05 * len(CLASSES)), squeeze=False)
    for r, label in enumerate(CLASSES):
        chosen = [item for item in images if item[0] == label][:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(chosen):
                continue
            _, image, mask, caption = chosen[c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=["#ff2d2d"], linewidths=0.9)
            ax.set_title(caption, fontsize=6.5)
            if c == 0:
                ax.text(-0.08, 0.5, label, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    # a 64-colour palette keeps the speckle figure small enough to commit (greys + the outline colour)
    Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def _figure_examples(plans: list[ViewPlan], image_size: int, p_annotated: float, per_class: int) -> list:
    """Pick views to show: per class, typical ones first, then each atypical variant once."""
    chosen = []
    for label in CLASSES:
        mine = [p for p in plans if p.label == label]
        atypical = {}
        for p in mine:
            if (p.variant != "typical" or p.small) and (p.variant, p.small) not in atypical:
                atypical[(p.variant, p.small)] = p
        extra = list(atypical.values())[: max(1, per_class // 2)]
        typical = [p for p in mine if p.variant == "typical" and not p.small and p.view == 1]
        chosen += typical[: per_class - len(extra)] + extra
    out = []
    for p in chosen:
        view = render_view(p, image_size, p_annotated)
        tags = [p.variant if p.variant != "typical" else "", "small" if p.small else ""]
        caption = " ".join(t for t in [p.name] + tags if t)
        out.append((p.label, view.image, view.mask, caption))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skintumor.data.phantom",
                                     description="Generate the synthetic skin-tumour ultrasound phantom "
                                                 "(PNG images, lesion masks, manifest.csv with findings).")
    parser.add_argument("--out", type=Path, help="output folder (must be empty or earlier phantom output)")
    parser.add_argument("--n-patients", type=int, nargs=3, default=[149, 74, 32], metavar=("CYST", "LIPOMA", "PILO"))
    parser.add_argument("--n-images", type=int, default=698, help="images in all (1..5 views per patient)")
    parser.add_argument("--image-size", type=int, default=256, help="square images, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p-cyst-no-enhancement", type=float, default=0.15)
    parser.add_argument("--p-pilomatricoma-no-calcification", type=float, default=0.2)
    parser.add_argument("--p-lipoma-hypoechoic", type=float, default=0.2)
    parser.add_argument("--p-small", type=float, default=0.1)
    parser.add_argument("--p-annotated", type=float, default=0.3)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (output is identical for any number)")
    parser.add_argument("--figure", type=Path, help="also write an example grid (PNG) to this path")
    parser.add_argument("--figure-only", action="store_true", help="only render the figure's examples, write no data set")
    args = parser.parse_args(argv)
    options = dict(p_cyst_no_enhancement=args.p_cyst_no_enhancement,
                   p_pilomatricoma_no_calcification=args.p_pilomatricoma_no_calcification,
                   p_lipoma_hypoechoic=args.p_lipoma_hypoechoic, p_small=args.p_small)
    try:
        if args.figure_only and args.figure is None:
            raise DataError("--figure-only needs --figure PATH")
        if not args.figure_only and args.out is None:
            raise DataError("--out DIR is required (or use --figure-only --figure PATH)")
        if args.figure is not None and args.figure.exists():
            raise DataError(f"{args.figure}: file exists; choose a new path")
        if not args.figure_only:
            manifest = generate_phantom(args.out, args.n_patients, args.n_images, args.image_size, args.seed,
                                        p_annotated=args.p_annotated, n_jobs=args.jobs, **options)
            counts = manifest.table.groupby("label")["patient_id"].nunique()
            print(f"wrote {len(manifest)} images of {counts.sum()} patients "
                  f"({', '.join(f'{c}: {counts.get(c, 0)}' for c in CLASSES)}) to {args.out}")
        if args.figure is not None:
            plans = plan_phantom(args.n_patients, args.n_images, args.seed, **options)
            examples = _figure_examples(plans, args.image_size, args.p_annotated, per_class=6)
            print(f"figure: {plot_examples(examples, args.figure, per_class=6)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
