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

Modules, each importing only those before it: ``anatomy`` (skin layers), ``lesions`` (classes,
findings, lesions), ``acoustics`` (attenuation, TGC, speckle, log compression), ``rendering``
(one view), ``dataset`` (plan, generation, cache), ``figure`` (example grid), ``__main__`` (CLI).

Public API::

    plan_phantom(...)            -> list[ViewPlan]    patients and their views, nothing rendered
    render_view(plan, size)      -> RenderedView      one image, its mask and its true findings
    speckle_envelope(amp, rng)   -> HxW envelope      the RF + Hilbert step (used by tests)
    generate_phantom(out_dir)    -> Manifest          images/, masks/, manifest.csv, phantom.json
    phantom_manifest(root)       -> Manifest          cached data source (registered as "phantom")
    python -m skintumor.data.phantom --out DIR        the same from the shell
"""

from skintumor.data.phantom.acoustics import speckle_envelope
from skintumor.data.phantom.dataset import generate_phantom, phantom_key, phantom_manifest, plan_phantom
from skintumor.data.phantom.lesions import CLASSES, FINDINGS
from skintumor.data.phantom.rendering import RenderedView, ViewPlan, render_view

__all__ = [
    "CLASSES",
    "FINDINGS",
    "RenderedView",
    "ViewPlan",
    "generate_phantom",
    "phantom_key",
    "phantom_manifest",
    "plan_phantom",
    "render_view",
    "speckle_envelope",
]
