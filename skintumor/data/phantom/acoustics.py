"""Image formation from the tissue maps: attenuation and the time-gain compensation (TGC) that only
partly undoes it, the RF point-spread function, the speckle envelope (RF + Hilbert transform) and
log compression to grey levels.

Posterior enhancement and shadowing are not drawn: they arise from the attenuation map through
:func:`round_trip_transmission` (a lesion attenuating less or more than the tissue beside it);
:func:`posterior_effect_db` measures them for the findings. All maps are (H, W) with rows = depth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

ALPHA_REF = 0.09  # what the time-gain compensation assumes; times tgc_fraction < 1 it stays below every tissue's


def round_trip_transmission(alpha: np.ndarray, dz: float) -> np.ndarray:
    """Round-trip amplitude transmission to each pixel, (H, W), from the attenuation (Np/mm one-way, (H, W))."""
    # round-trip transmission to each depth (exclusive: a reflector is not shadowed by itself)
    cumulative = np.cumsum(alpha, axis=0) * dz - alpha * dz
    return np.exp(-2 * cumulative)


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


def speckle_envelope(
    amplitude: np.ndarray,
    rng: np.random.Generator,
    specular: np.ndarray | None = None,
    noise: float = 0.0,
    scale: float = 1.0,
) -> np.ndarray:
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
    norm = np.sqrt(2 * np.sum(axial**2) * np.sum(lateral**2))
    return np.abs(analytic) / norm


def time_gain(depth_mm: np.ndarray, tgc_fraction: float) -> np.ndarray:
    """TGC gain at ``depth_mm``: undoes only ``tgc_fraction`` of the attenuation :data:`ALPHA_REF` assumes."""
    return np.exp(2 * tgc_fraction * ALPHA_REF * depth_mm)


def log_compress(
    envelope: np.ndarray, gain_db: float = 0.0, dynamic_range_db: float = 50.0, top_db: float = 14.0
) -> np.ndarray:
    """Envelope -> grey levels in [0, 255] (float): ``top_db + gain`` is white, ``dynamic_range`` below is black."""
    db = 20 * np.log10(np.maximum(envelope, 1e-12)) + gain_db
    return np.clip((db - (top_db - dynamic_range_db)) / dynamic_range_db * 255.0, 0, 255)


def posterior_effect_db(
    alpha: np.ndarray, alpha_without_lesion: np.ndarray, lesion: np.ndarray, dz: float
) -> np.ndarray:
    """Round-trip change (dB) the lesion makes to echoes below it, per lesion column, central columns only.

    ``alpha``, ``alpha_without_lesion``: (H, W) attenuation with and without the lesion; ``lesion``: (H, W) bool.
    """
    heights = lesion.sum(axis=0)
    central = heights >= 0.5 * heights.max()
    delta = (alpha - alpha_without_lesion).sum(axis=0) * dz
    return (-2 * delta * 20 / np.log(10))[central]
