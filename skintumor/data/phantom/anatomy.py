"""The patient's skin and what lies beneath it: epidermis, dermis, subcutaneous fat with septa, muscle.

Holds the tissues' attenuation, the :class:`Anatomy` of one patient (layer thicknesses, undulation,
echogenicity; drawn once per patient, identical in all views) and its maps on a view's pixel grid
before a lesion is embedded: echogenicity, specular interfaces (skin entry echo, fascia) and
attenuation. Depths ``z`` are tissue millimetres below the skin, lateral positions ``x``
millimetres from the lesion centre; grids ``Z``, ``X`` are (n, n) with rows = depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# attenuation (one-way amplitude, Np/mm) of the tissues; round trip doubles it
ALPHA_DERMIS, ALPHA_FAT, ALPHA_MUSCLE = 0.11, 0.09, 0.11


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


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """The patient's layers, drawn from ``rng`` (the patient's generator: the lesion is drawn from it next)."""
    und = np.stack(
        [
            np.column_stack([rng.uniform(0, amp, 3), rng.uniform(8, 40, 3), rng.uniform(0, 2 * np.pi, 3)])
            for amp in (0.05, 0.25, 0.8)
        ]
    )
    n_septa = rng.integers(4, 12)
    septa = np.column_stack(
        [
            rng.uniform(0.1, 0.95, n_septa),
            rng.normal(0, 0.12, n_septa),
            rng.uniform(0, 0.8, n_septa),
            rng.uniform(6, 25, n_septa),
            rng.uniform(-25, 15, n_septa),
            rng.uniform(4, 25, n_septa),
        ]
    )
    return Anatomy(
        epidermis=rng.uniform(0.1, 0.3),
        dermis=rng.uniform(1.0, 3.2),
        fat=rng.uniform(2.5, 14),
        undulation=und,
        dermis_echo=rng.uniform(0.7, 1.3),
        fat_echo=rng.uniform(0.12, 0.35),
        muscle_echo=rng.uniform(0.2, 0.45),
        septa=septa,
        muscle_angle=rng.normal(0, 0.15),
        muscle_spacing=rng.uniform(0.9, 2.0),
    )


def _wave(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum of sinusoids (rows of amplitude, wavelength, phase) at ``x``: smooth layer undulation."""
    return sum(a * np.sin(2 * np.pi * x / lam + ph) for a, lam, ph in params)


def smooth_step(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _line_width(px_mm: float) -> float:
    """Width (mm, a Gaussian's sigma) of the specular interfaces: skin entry echo and fascia."""
    return max(0.6 * px_mm, 0.03)


def layer_boundaries(anatomy: Anatomy, x: np.ndarray, slope: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths of the epidermis' base, the dermis-subcutis junction and the fascia: three (n,) arrays, tissue mm.

    ``x``: (n,) lateral position of each column; ``slope``: (n,) depth the probe's tilt adds to the deeper layers.
    """
    epi = anatomy.epidermis + _wave(anatomy.undulation[0], x)
    junction = epi + anatomy.dermis + _wave(anatomy.undulation[1], x) + slope
    fascia = junction + anatomy.fat + _wave(anatomy.undulation[2], x) + slope
    return epi, junction, fascia


def displaced_fascia(fascia: np.ndarray, Z: np.ndarray, lesion: np.ndarray, sigma: float) -> np.ndarray:
    """Mass effect: the fascia, (n,) depth per column, gives way below a lesion that reaches it.

    ``lesion``: (n, n) bool; ``sigma``: how far (columns) the push spreads along the fascia.
    """
    bottom = np.where(lesion.any(axis=0), np.where(lesion, Z, -np.inf).max(axis=0), -np.inf)
    push = np.clip(bottom + 1.0 - fascia, 0, None)
    pushed = fascia + ndimage.gaussian_filter1d(push, sigma=sigma, mode="nearest")
    return np.maximum(pushed, fascia)


def layer_maps(
    anatomy: Anatomy,
    Z: np.ndarray,
    X: np.ndarray,
    epi: np.ndarray,
    junction: np.ndarray,
    fascia: np.ndarray,
    px_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Echogenicity, specular reflector amplitude and attenuation (Np/mm one-way) of the layers: each (n, n).

    ``epi``, ``junction``, ``fascia``: (n,) boundary depths per column (:func:`layer_boundaries`);
    ``px_mm``: tissue mm per row. Call :func:`clear_gel` once everything is added to the maps.
    """
    epi_g, jun_g, fas_g = epi[None, :], junction[None, :], fascia[None, :]
    echo = np.zeros(Z.shape)
    specular = np.zeros(Z.shape)
    alpha = np.zeros(Z.shape)
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
        seg = smooth_step((X - x0) / 1.5) * smooth_step((x0 + length - X) / 1.5)
        profile = np.exp(-0.5 * ((Z - line) / max(0.1, px_mm)) ** 2) * seg * in_fat
        echo += 0.9 * anatomy.dermis_echo * profile
    # striated muscle: echogenic perimysium lines, slightly oblique
    phase = 2 * np.pi * (Z * np.cos(anatomy.muscle_angle) + X * np.sin(anatomy.muscle_angle)) / anatomy.muscle_spacing
    wobble = 1.5 * np.sin(2 * np.pi * X / 9.0 + anatomy.muscle_spacing * 7) + 0.8 * np.sin(2 * np.pi * X / 3.1 + Z)
    fibres = anatomy.muscle_echo * (0.7 + 1.6 * ((1 + np.cos(phase + wobble)) / 2) ** 6)
    echo = np.where(in_muscle, fibres, echo)
    # specular interfaces: skin entry echo and the fascia
    line_w = _line_width(px_mm)
    specular += 4.0 * np.exp(-0.5 * (Z / line_w) ** 2)
    specular += 2.5 * np.exp(-0.5 * ((Z - fas_g) / line_w) ** 2)
    echo += 1.2 * np.exp(-0.5 * ((Z - fas_g) / max(0.15, px_mm)) ** 2)
    return echo, specular, alpha


def clear_gel(echo: np.ndarray, specular: np.ndarray, Z: np.ndarray, px_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """No scatterers in the stand-off gel (``Z < 0``); only the skin entry echo reaches a little way into it."""
    return np.where(Z >= 0, echo, 0.0), np.where(Z >= -_line_width(px_mm) * 3, specular, 0.0)
