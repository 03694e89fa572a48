"""The data set: the plan of patients and views, its rendering to disk, and the cached data source.

:func:`plan_phantom` decides patients, classes, presentations and views (nothing rendered);
:func:`generate_phantom` writes ``images/``, ``masks/``, ``manifest.csv`` and ``phantom.json``;
:func:`phantom_manifest` generates once into ``root/<hash of the parameters>/`` and reuses it
(registered as the ``phantom`` data source).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skintumor.data.manifest import Manifest
from skintumor.data.phantom.lesions import CLASSES
from skintumor.data.phantom.rendering import ViewPlan, render_view
from skintumor.errors import DataError

MAX_VIEWS = 5
PHANTOM_VERSION = 2  # bump when the images change: it is part of the cache key
MARKER = "phantom.json"  # marks a folder as phantom output (the CLI only overwrites such folders)


# ----------------------------------------------------------------------------------------------
# The plan: which patients, which class and presentation, how many views. Nothing is rendered.
# ----------------------------------------------------------------------------------------------
def plan_phantom(
    n_patients=(149, 74, 32),
    n_images: int = 698,
    seed: int = 0,
    p_cyst_no_enhancement: float = 0.15,
    p_pilomatricoma_no_calcification: float = 0.2,
    p_lipoma_hypoechoic: float = 0.2,
    p_small: float = 0.1,
) -> list[ViewPlan]:
    """Patients per class (in :data:`CLASSES` order), presentations and 1..5 views each.

    Patients are shuffled so their ids say nothing about the class; every patient gets one view,
    the remaining ``n_images - sum(n_patients)`` views go to random patients (at most 5 each).
    """
    counts = [int(n) for n in n_patients]
    if len(counts) != len(CLASSES) or min(counts) < 1:
        raise DataError(
            f"phantom: n_patients needs {len(CLASSES)} positive counts ({', '.join(CLASSES)}), got {list(n_patients)}"
        )
    total = sum(counts)
    if not total <= n_images <= MAX_VIEWS * total:
        raise DataError(f"phantom: n_images={n_images} impossible for {total} patients with 1..{MAX_VIEWS} views each")
    for name, p in (
        ("p_cyst_no_enhancement", p_cyst_no_enhancement),
        ("p_small", p_small),
        ("p_pilomatricoma_no_calcification", p_pilomatricoma_no_calcification),
        ("p_lipoma_hypoechoic", p_lipoma_hypoechoic),
    ):
        if not 0.0 <= p <= 1.0:
            raise DataError(f"phantom: {name} must be a proportion in [0, 1], got {p}")
    rng = np.random.default_rng([seed, 0])
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(labels)
    views = np.ones(total, dtype=int)
    for _ in range(n_images - total):
        views[rng.choice(np.flatnonzero(views < MAX_VIEWS))] += 1
    atypical = {
        "cyst": ("no_enhancement", p_cyst_no_enhancement),
        "lipoma": ("hypoechoic", p_lipoma_hypoechoic),
        "pilomatricoma": ("no_calcification", p_pilomatricoma_no_calcification),
    }
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
# Writing a data set, caching it.
# ----------------------------------------------------------------------------------------------
def _parameters(
    n_patients,
    n_images,
    image_size,
    seed,
    p_cyst_no_enhancement,
    p_pilomatricoma_no_calcification,
    p_lipoma_hypoechoic,
    p_small,
    p_annotated,
    caliper_readout,
) -> dict:
    return {
        "version": PHANTOM_VERSION,
        "n_patients": [int(n) for n in n_patients],
        "n_images": int(n_images),
        "image_size": int(image_size),
        "seed": int(seed),
        "p_cyst_no_enhancement": float(p_cyst_no_enhancement),
        "p_pilomatricoma_no_calcification": float(p_pilomatricoma_no_calcification),
        "p_lipoma_hypoechoic": float(p_lipoma_hypoechoic),
        "p_small": float(p_small),
        "p_annotated": float(p_annotated),
        "caliper_readout": bool(caliper_readout),
    }


def _render_and_write(plan: ViewPlan, out_dir: Path, image_size: int, p_annotated: float, readout: bool) -> dict:
    view = render_view(plan, image_size, p_annotated, readout)
    path, mask_path = f"images/{plan.name}.png", f"masks/{plan.name}.png"
    Image.fromarray(view.image).save(out_dir / path)
    Image.fromarray(view.mask.astype(np.uint8) * 255).save(out_dir / mask_path)
    return {
        "path": path,
        "label": plan.label,
        "patient_id": plan.patient_id,
        "group_id": plan.patient_id,
        "mask_path": mask_path,
        "view": plan.view,
        "variant": plan.variant,
        "small": int(plan.small),
        **view.findings,
    }


def _is_phantom_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def generate_phantom(
    out_dir: str | Path,
    n_patients=(149, 74, 32),
    n_images: int = 698,
    image_size: int = 256,
    seed: int = 0,
    p_cyst_no_enhancement: float = 0.15,
    p_pilomatricoma_no_calcification: float = 0.2,
    p_lipoma_hypoechoic: float = 0.2,
    p_small: float = 0.1,
    p_annotated: float = 0.3,
    caliper_readout: bool = False,
    n_jobs: int = 2,
    progress: bool = True,
) -> Manifest:
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
    params = _parameters(
        n_patients,
        n_images,
        image_size,
        seed,
        p_cyst_no_enhancement,
        p_pilomatricoma_no_calcification,
        p_lipoma_hypoechoic,
        p_small,
        p_annotated,
        caliper_readout,
    )
    if not 0.0 <= p_annotated <= 1.0:
        raise DataError(f"phantom: p_annotated must be a proportion in [0, 1], got {p_annotated}")
    plans = plan_phantom(
        n_patients,
        n_images,
        seed,
        p_cyst_no_enhancement,
        p_pilomatricoma_no_calcification,
        p_lipoma_hypoechoic,
        p_small,
    )
    if _is_phantom_dir(out_dir):  # regenerate our own output only: remove what we wrote before
        for name in ("images", "masks"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("manifest.csv", MARKER):
            (out_dir / name).unlink(missing_ok=True)
    for name in ("images", "masks"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    rows = _run_all(plans, out_dir, int(image_size), float(p_annotated), bool(caliper_readout), n_jobs, progress)
    manifest = Manifest(pd.DataFrame(rows), out_dir, list(CLASSES))
    manifest.to_csv(out_dir / "manifest.csv")
    (out_dir / MARKER).write_text(json.dumps(params, indent=1) + "\n")
    return manifest


def _run_all(plans, out_dir, image_size, p_annotated, readout, n_jobs, progress) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("phantom"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("render", total=len(plans))
        if n_jobs == 1:
            results = (_render_and_write(p, out_dir, image_size, p_annotated, readout) for p in plans)
        else:
            from joblib import Parallel, delayed

            results = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=8)(
                delayed(_render_and_write)(p, out_dir, image_size, p_annotated, readout) for p in plans
            )
        rows = []
        for row in results:  # results arrive in plan order, so the manifest order is fixed
            rows.append(row)
            bar.advance(task)
    return rows


def phantom_key(**params) -> str:
    """Short hash of the generation parameters (and the phantom version): the cache folder's name."""
    text = json.dumps(_parameters(**params), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def phantom_manifest(
    root: str | Path = "outputs/phantom",
    n_patients=(149, 74, 32),
    n_images: int = 698,
    image_size: int = 256,
    seed: int = 0,
    p_cyst_no_enhancement: float = 0.15,
    p_pilomatricoma_no_calcification: float = 0.2,
    p_lipoma_hypoechoic: float = 0.2,
    p_small: float = 0.1,
    p_annotated: float = 0.3,
    caliper_readout: bool = False,
    n_jobs: int = 2,
    progress: bool = True,
) -> Manifest:
    """The phantom as a data source: generated once into ``root/<hash of the parameters>/``, then reused.

    Generation writes to a temporary folder that is renamed when complete, so an interrupted run
    never leaves a half-written cache.
    """
    params = dict(
        n_patients=n_patients,
        n_images=n_images,
        image_size=image_size,
        seed=seed,
        p_cyst_no_enhancement=p_cyst_no_enhancement,
        p_pilomatricoma_no_calcification=p_pilomatricoma_no_calcification,
        p_lipoma_hypoechoic=p_lipoma_hypoechoic,
        p_small=p_small,
        p_annotated=p_annotated,
        caliper_readout=caliper_readout,
    )
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
