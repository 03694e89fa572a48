"""The synthetic phantom: plan, physics, ground truth, cache, CLI. Tiny sets only (fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from skintumor.data import phantom
from skintumor.data.images import read_greyscale, read_mask
from skintumor.data.manifest import CORE_COLUMNS, Manifest
from skintumor.data.phantom import (  # the modules whose internals are checked or patched
    CLASSES,
    FINDINGS,
    ViewPlan,
    acoustics,
    dataset,
    generate_phantom,
    plan_phantom,
    render_view,
    rendering,
    speckle_envelope,
)
from skintumor.data.phantom.__main__ import main
from skintumor.data.sources import load_source
from skintumor.errors import DataError

TINY = dict(n_patients=(2, 2, 2), n_images=9, image_size=64, seed=3, progress=False)


def _views(label, variant="typical", n=4, small=False):
    return [
        render_view(ViewPlan(f"T{i}", label, variant, small, i, 1, 11), image_size=128, p_annotated=0.0)
        for i in range(n)
    ]


def test_default_plan_mirrors_the_study():
    plans = plan_phantom()
    assert len(plans) == 698
    patients = {}
    for p in plans:
        patients.setdefault(p.patient_id, set()).add(p.label)
    assert all(len(labels) == 1 for labels in patients.values())
    per_class = [sum(1 for labels in patients.values() if c in labels) for c in CLASSES]
    assert per_class == [149, 74, 32]
    views = np.bincount([p.patient_index for p in plans])
    assert views.min() >= 1 and views.max() <= 5
    assert len({p.name for p in plans}) == 698
    # atypical presentations exist in every class, typical ones dominate
    for c in CLASSES:
        variants = [p.variant for p in plans if p.label == c and p.view == 1]
        assert 0 < sum(v != "typical" for v in variants) < len(variants) / 2


def test_plan_rejects_impossible_counts():
    with pytest.raises(DataError, match="n_images"):
        plan_phantom((2, 2, 2), n_images=40)
    with pytest.raises(DataError, match="n_patients"):
        plan_phantom((2, 2), n_images=4)
    with pytest.raises(DataError, match="p_small"):
        plan_phantom((2, 2, 2), n_images=6, p_small=1.5)


def test_generation_is_deterministic_and_complete(tmp_path):
    a = generate_phantom(tmp_path / "a", n_jobs=1, **TINY)
    generate_phantom(tmp_path / "b", n_jobs=2, **TINY)  # two workers write the same bytes as one
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 9 + 2  # images, masks, manifest.csv, phantom.json
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other_seed = render_view(plan_phantom((2, 2, 2), 9, seed=4)[0], 64).image
    assert other_seed.tobytes() != read_greyscale(a.image_path(0)).tobytes()

    manifest = Manifest.from_csv(tmp_path / "a" / "manifest.csv", classes=list(CLASSES))
    assert list(manifest.table.columns[:5]) == list(CORE_COLUMNS)
    assert set(FINDINGS) <= set(manifest.table.columns)
    assert len(manifest) == 9 and manifest.table["patient_id"].nunique() == 6
    assert manifest.table.groupby("label")["patient_id"].nunique().to_dict() == {c: 2 for c in CLASSES}
    for i in range(len(manifest)):
        image = read_greyscale(manifest.image_path(i))
        assert image.dtype == np.uint8 and image.shape == (64, 64)
        assert image.std() > 10  # speckle, not a flat drawing
        mask = read_mask(manifest.mask_path(i), shape=image.shape)
        assert 0 < mask.sum() < 0.8 * mask.size


def test_speckle_is_fully_developed_and_correlated():
    ratios = []
    for seed in range(3):
        env = speckle_envelope(np.ones((384, 384)), np.random.default_rng(seed))[24:-24, 24:-24]
        ratios.append(env.mean() / env.std())
    assert np.mean(ratios) == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), abs=0.05)  # Rayleigh: 1.91
    centred = env - env.mean()

    def corr(dz, dx):
        a = centred[: centred.shape[0] - dz, : centred.shape[1] - dx]
        b = centred[dz:, dx:]
        return float((a * b).mean() / centred.var())

    assert corr(1, 0) > 0.5 and corr(0, 1) > 0.5  # grains span several pixels
    assert abs(corr(20, 0)) < 0.1 and abs(corr(0, 20)) < 0.1


def test_attenuation_darkens_depth_and_tgc_only_partly_restores_it():
    anatomy, lesion = rendering._patient_scene(ViewPlan("T", "lipoma", "typical", False, 0, 1, 5))
    view = rendering._view_params(ViewPlan("T", "lipoma", "typical", False, 0, 1, 5), anatomy, lesion, 0.0)
    maps = rendering.tissue_maps(anatomy, lesion, view, 64)
    cumulative = np.cumsum(maps.alpha, axis=0) * maps.dz
    assert np.all(np.diff(cumulative, axis=0) >= 0)
    residual = 2 * (view.tgc_fraction * acoustics.ALPHA_REF * maps.z[-1] - cumulative[-1].mean())
    assert residual < 0  # the deepest row stays darker than the surface after TGC


def _below_vs_beside(view, rows=12):
    """Mean grey just below the lesion's central columns minus the mean beside it at the same depth."""
    mask = view.mask
    cols = np.flatnonzero(mask.any(axis=0))
    heights = mask.sum(axis=0)
    central = np.flatnonzero(heights >= 0.6 * heights.max())
    bottom = max(np.flatnonzero(mask[:, c]).max() for c in central) + 3
    band = slice(bottom, min(bottom + rows, mask.shape[0]))
    margin = max(4, len(cols) // 4)
    beside = [c for c in range(mask.shape[1]) if c < cols.min() - margin or c > cols.max() + margin]
    return view.image[band][:, central].mean() - view.image[band][:, beside].mean()


def test_mask_covers_the_lesion_and_posterior_effects_show_in_the_image():
    for label, sign in (("cyst", -1), ("pilomatricoma", +1)):
        contrasts, posterior = [], []
        for view in _views(label):
            depth_inside = ndimage.distance_transform_edt(view.mask)
            inner = depth_inside > 0.4 * depth_inside.max()  # the core, without wall or rim
            ring = ndimage.binary_dilation(view.mask, iterations=6) & ~ndimage.binary_dilation(view.mask, iterations=2)
            contrasts.append(view.image[inner].mean() - view.image[ring].mean())
            posterior.append(_below_vs_beside(view))
            rows, cols = np.nonzero(view.mask)
            assert 0 < rows.mean() < 128 and 0 < cols.mean() < 128
        assert sign * np.mean(contrasts) > 15, (label, contrasts)  # cyst darker, pilomatricoma brighter
        assert -sign * np.mean(posterior) > 8, (label, posterior)  # enhancement / shadowing below it


def test_findings_follow_each_class_definition():
    for view in _views("cyst"):
        f = view.findings
        assert f["posterior_enhancement"] == 1 and f["posterior_shadowing"] == 0 and f["calcification"] == 0
        assert f["internal_striations"] == 0 and f["rim"] == 0
    assert all(v.findings["posterior_enhancement"] == 0 for v in _views("cyst", "no_enhancement"))
    for view in _views("lipoma"):
        f = view.findings
        assert f["posterior_enhancement"] == 0 and f["posterior_shadowing"] == 0 and f["calcification"] == 0
        assert f["internal_striations"] == 1 and f["layer"] == "subcutis" and f["punctum"] == 0
    for view in _views("pilomatricoma"):
        f = view.findings
        assert f["posterior_shadowing"] == 1 and f["calcification"] == 1 and f["posterior_enhancement"] == 0
        assert f["layer"] == "dermis-subcutis"
    for view in _views("pilomatricoma", "no_calcification"):
        assert view.findings["calcification"] == 0 and view.findings["posterior_shadowing"] == 0


def test_lesion_size_is_printed_on_screen_only_when_that_confounder_is_on():
    plans = plan_phantom((3, 3, 3), n_images=9, seed=5)
    changed = 0
    for plan in plans:
        plain = render_view(plan, 96, p_annotated=1.0).image
        readout = render_view(plan, 96, p_annotated=1.0, caliper_readout=True).image
        changed += not np.array_equal(plain, readout)
        # no calipers on screen, nothing to print
        assert np.array_equal(render_view(plan, 96, 0.0).image, render_view(plan, 96, 0.0, caliper_readout=True).image)
    assert changed >= 3  # views with calipers show "D1 <width>mm" only with caliper_readout


def test_load_source_generates_once_then_reuses_the_cache(tmp_path, monkeypatch):
    options = {k: v for k, v in TINY.items()}
    first = load_source("phantom", root=tmp_path, n_jobs=1, **options)
    folders = [p.name for p in tmp_path.iterdir()]
    assert folders == [
        phantom.phantom_key(
            **{k: v for k, v in options.items() if k != "progress"},
            p_cyst_no_enhancement=0.15,
            p_pilomatricoma_no_calcification=0.2,
            p_lipoma_hypoechoic=0.2,
            p_small=0.1,
            p_annotated=0.3,
            caliper_readout=False,
        )
    ]
    assert first.classes == list(CLASSES) and len(first) == 9

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(dataset, "generate_phantom", no_generation)
    second = load_source("phantom", root=tmp_path, n_jobs=1, **options)
    assert second.table.equals(first.table)
    with pytest.raises(AssertionError):  # other parameters: a new folder would be generated
        load_source("phantom", root=tmp_path, n_jobs=1, **{**options, "seed": 4})


def test_interrupted_generation_leaves_no_cache(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "_render_and_write", broken)
    with pytest.raises(KeyboardInterrupt):
        phantom.phantom_manifest(tmp_path, n_jobs=1, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_foreign_folder_and_rewrites_its_own(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["--n-patients", "1", "1", "1", "--n-images", "3", "--image-size", "64", "--jobs", "1"]
    assert main(["--out", str(foreign), *args]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "phantom"
    assert main(["--out", str(out), *args]) == 0
    first = (out / "manifest.csv").read_bytes()
    assert main(["--out", str(out), *args]) == 0  # its own output may be regenerated
    assert (out / "manifest.csv").read_bytes() == first
    assert len(list((out / "images").iterdir())) == 3


def test_cli_figure_only_writes_a_png_and_no_data(tmp_path):
    figure = tmp_path / "examples.png"
    args = ["--n-patients", "2", "1", "1", "--n-images", "5", "--image-size", "64"]
    assert main(["--figure-only", "--figure", str(figure), *args]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["examples.png"]
    assert read_greyscale(figure).shape[0] > 100
    assert main(["--figure-only", "--figure", str(figure), *args]) == 2  # never overwrites a file
