"""The three tumours: class list, findings, and each class's lesion, drawn per patient and embedded in the skin.

Classes (in label order): ``cyst`` (epidermal cyst), ``lipoma``, ``pilomatricoma``. A lesion's
``variant`` is ``typical`` or its class's atypical presentation (``no_enhancement`` for cysts,
``hypoechoic`` for lipomas, ``no_calcification`` for pilomatricomas); ``small`` shrinks it. The
lesion is an ellipse (semi-axes in mm) with a harmonically perturbed boundary, placed in its layer;
inside, each class has its own echogenicity, texture, attenuation and structures: a cyst's wall,
refraction shadows and punctum, a lipoma's striations and partial capsule, a pilomatricoma's
hypoechoic rim and calcifications.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from skintumor.data.phantom.anatomy import ALPHA_FAT, Anatomy, smooth_step

CLASSES = ("cyst", "lipoma", "pilomatricoma")
FINDINGS = (
    "posterior_enhancement",
    "posterior_shadowing",
    "calcification",
    "internal_striations",
    "rim",
    "punctum",
    "layer",
)


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


def draw_lesion(rng: np.random.Generator, anatomy: Anatomy, label: str, variant: str, small: bool) -> Lesion:
    """The patient's lesion in ``anatomy``, drawn from ``rng`` (the patient's generator, after the anatomy)."""
    top_dermis = anatomy.epidermis + anatomy.dermis  # dermis-subcutis junction
    # lesion size and place per class (semi-axes in mm)
    # sizes and shapes overlap between the classes: neither tells the class alone
    if label == "cyst":
        a = rng.uniform(2.5, 9.5)
        b = a * rng.uniform(0.55, 1.0)
    elif label == "lipoma":
        a = rng.uniform(4.5, 15.0)
        b = a * rng.uniform(0.28, 0.6)
    else:
        a = rng.uniform(2.5, 7.5)
        b = a * rng.uniform(0.65, 1.0)
    if small:
        scale = rng.uniform(0.35, 0.55)
        a, b = a * scale, b * scale
    if label == "cyst":
        z = top_dermis + rng.uniform(-0.5, 1.45) * b
    elif label == "lipoma":
        z = top_dermis + rng.uniform(0.2, 2.5) + b
    else:
        z = top_dermis + rng.uniform(-0.35, 0.35) * b
    z = max(z, anatomy.epidermis + 0.3 + b)  # never through the epidermis
    n_harm = 4
    harmonics = np.column_stack(
        [
            rng.uniform(0, 0.05 if label != "lipoma" else 0.07, n_harm) / np.arange(1, n_harm + 1),
            rng.uniform(0, 2 * np.pi, n_harm),
        ]
    )
    texture = rng.normal(0, 1, (12, 12))
    debris = rng.exponential(1, (64, 64))
    foci = np.zeros((0, 3))
    striations = np.zeros((0, 5))
    punctum, rim, edge_shadows = False, False, False
    if label == "cyst":
        typical = variant == "typical"
        echo = rng.uniform(0.02, 0.08) if typical else rng.uniform(0.15, 0.5)  # ruptured: like a pilomatricoma
        alpha = rng.uniform(0.0, 0.01) if typical else ALPHA_FAT * rng.uniform(0.9, 1.2)
        punctum = bool(rng.random() < 0.4)
        edge_shadows = typical and bool(rng.random() < 0.85)
    elif label == "lipoma":
        echo = anatomy.fat_echo * (rng.uniform(1.0, 1.8) if variant == "typical" else rng.uniform(0.4, 0.7))
        alpha = ALPHA_FAT * rng.uniform(0.9, 1.1)
        n_lines = rng.integers(3, 9) if variant == "typical" else rng.integers(0, 3)
        v = rng.uniform(-0.75, 0.75, n_lines)
        start = rng.uniform(-0.9, 0.3, n_lines)
        striations = np.column_stack(
            [
                v,
                start,
                np.minimum(start + rng.uniform(0.4, 1.2, n_lines), 0.9),
                rng.normal(0, 0.15, n_lines),
                rng.uniform(2.0, 4.5, n_lines) * anatomy.fat_echo,
            ]
        )
    else:
        # without calcifications it is often darker and rimless: then it resembles a ruptured cyst
        echo = anatomy.dermis_echo * (rng.uniform(0.8, 2.2) if variant == "typical" else rng.uniform(0.45, 1.4))
        alpha = ALPHA_FAT * rng.uniform(0.95, 1.15)
        rim = bool(rng.random() < (0.9 if variant == "typical" else 0.6))
        if variant == "typical":
            n_foci = rng.integers(4, 15)
            centre = rng.uniform(-0.25, 0.25, 2)
            uv = centre + rng.normal(0, 0.35, (n_foci, 2))
            uv *= np.minimum(1.0, 0.65 / np.maximum(np.hypot(uv[:, 0], uv[:, 1]), 1e-6))[:, None]
            foci = np.column_stack([uv, rng.uniform(0.2, 0.6, n_foci)])
    return Lesion(
        label,
        variant,
        a,
        b,
        z,
        rng.normal(0, 0.08),
        harmonics,
        echo,
        alpha,
        texture,
        debris,
        foci,
        striations,
        punctum,
        rng.uniform(-0.4, 0.4),
        rim,
        edge_shadows,
        rng.uniform(0, 2 * np.pi),
    )


@dataclass
class LesionFrame:
    """The lesion's coordinates on a view's pixel grid: arrays (n, n) with rows = depth."""

    a: float  # lateral semi-axis in this cut, mm
    b: float  # depth semi-axis, mm
    u: np.ndarray  # lateral coordinate in the lesion frame, in semi-axes
    v: np.ndarray  # depth coordinate in the lesion frame, in semi-axes
    phi: np.ndarray  # angle in the lesion frame, rad
    rho: np.ndarray  # radius relative to the boundary's: < 1 inside the lesion
    inside: np.ndarray  # bool, the lesion


def lesion_frame(lesion: Lesion, Z: np.ndarray, X: np.ndarray, cross_section: float, tilt: float) -> LesionFrame:
    """Lesion coordinates at tissue positions ``Z``, ``X`` (mm, (n, n)) of a view.

    ``cross_section`` scales the lateral semi-axis (the probe's rotation about the vertical axis),
    ``tilt`` (rad) adds to the lesion's orientation.
    """
    # lesion coordinates: rotate into the lesion frame, scale by the semi-axes
    a, b = lesion.a * cross_section, lesion.b
    cos_t, sin_t = np.cos(lesion.tilt + tilt), np.sin(lesion.tilt + tilt)
    dzl = Z - lesion.z_center
    xr, zr = cos_t * X + sin_t * dzl, -sin_t * X + cos_t * dzl
    u, v = xr / a, zr / b
    phi = np.arctan2(v, u)
    radius = 1 + sum(amp * np.cos((k + 1) * phi + ph) for k, (amp, ph) in enumerate(lesion.harmonics))
    rho = np.hypot(u, v) / radius  # < 1 inside the lesion
    return LesionFrame(a, b, u, v, phi, rho, rho < 1.0)


def _field(grid: np.ndarray, u: np.ndarray, v: np.ndarray, extent: float = 1.3, order: int = 3) -> np.ndarray:
    """Sample a patient's random grid at lesion coordinates (u, v) in [-extent, extent]."""
    n = grid.shape[0]
    rows = (v + extent) / (2 * extent) * (n - 1)
    cols = (u + extent) / (2 * extent) * (n - 1)
    return ndimage.map_coordinates(grid, [rows.ravel(), cols.ravel()], order=order, mode="nearest").reshape(u.shape)


def embed_lesion(
    lesion: Lesion,
    anatomy: Anatomy,
    frame: LesionFrame,
    echo: np.ndarray,
    specular: np.ndarray,
    alpha: np.ndarray,
    Z: np.ndarray,
    X: np.ndarray,
    epi: np.ndarray,
    px_mm: float,
    width: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer maps with the lesion in them: (echo, specular, alpha), each (n, n); the given arrays may change.

    ``Z``, ``X``: tissue positions (mm) of the pixels; ``epi``: (n,) depth of the epidermis' base per
    column (where a cyst's punctum ends); ``px_mm``: tissue mm per row; ``width``: field of view, mm.
    """
    u, v, phi, rho, inside, a, b = frame.u, frame.v, frame.phi, frame.rho, frame.inside, frame.a, frame.b
    n = X.shape[1]
    epi_g = epi[None, :]
    texture = _field(lesion.texture, u, v)
    if lesion.label == "cyst":
        debris = _field(lesion.debris, u, v, order=1)
        inner = lesion.echo * (0.6 + 0.4 * texture.clip(-1, 2)) * (0.5 + 0.25 * debris**2)
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
            tract = (np.abs(X - xp) < max(0.25, 1.2 * width / n)) & (Z > epi_g) & (Z < top) & ~inside
            echo = np.where(tract, 0.08 * anatomy.dermis_echo, echo)
    elif lesion.label == "lipoma":
        blend = smooth_step((1.05 - rho) / 0.2)  # subtle margins: the lesion fades into the fat
        inner = lesion.echo * (1 + 0.15 * texture)
        for vk, u0, u1, curv, amp in lesion.striations:
            dist = (v - vk - curv * u**2) * b
            seg = smooth_step((u - u0) / 0.15) * smooth_step((u1 - u) / 0.15)
            inner = inner + amp * np.exp(-0.5 * (dist / max(0.1, px_mm)) ** 2) * seg
        echo = blend * inner + (1 - blend) * echo
        alpha = np.where(inside, lesion.alpha, alpha)
        capsule = np.exp(-0.5 * ((rho - 1) * b / max(0.08, px_mm)) ** 2) * (
            np.cos(2 * phi + lesion.capsule_phase) > 0.3
        )
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
    return echo, specular, alpha
