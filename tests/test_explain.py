"""Explanations: CAMs find what a hand-made model uses, metrics and statistics give known answers, the CLI
explains a tiny trained run (images with lesion masks and one finding column)."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
    neighbors_weights,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from rich.console import Console
from torch import nn

from skintumor.errors import ConfigError
from skintumor.evaluate.report import build_report
from skintumor.explain import agreement as agr
from skintumor.explain.__main__ import main as explain_main
from skintumor.explain.cam import LogitsOnly, branch_cam, branch_contributions, explain_batch, gradient_cam, normalise
from skintumor.explain.faithfulness import imputation_system, kept_pixels, road_scores, tie_broken_ranks
from skintumor.explain.run import ROAD_IMAGES, ExplainSettings, maps_metrics
from skintumor.hydra_callbacks import explanation_sections
from skintumor.models.attention_resnet import AttentionGatedResNet18
from skintumor.train import explain_settings

from conftest import REPO

WINDOW = (slice(20, 30), slice(8, 18))  # rows, cols of the only region the window model looks at


class WindowModel(nn.Module):
    """Logit c = w_c x mean activation of ``layer4`` inside WINDOW: only that region matters."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        with torch.no_grad():
            self.layer4[0].weight.fill_(0.1)
            self.layer4[0].bias.zero_()
        self.register_buffer("w", torch.tensor([1.0, -1.0]))

    def forward(self, x):
        a = self.layer4(x)[:, :, WINDOW[0], WINDOW[1]].mean(dim=(1, 2, 3))
        return a[:, None] * self.w[None]


def _blob_images(decoy: bool) -> torch.Tensor:
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 40, 40), dtype=np.float32) * 0.2
    x[:, :, 22:28, 10:16] += 2.0  # inside the window
    if decoy:
        x[:, :, 5:11, 28:34] += 2.0  # an identical blob the model never looks at
    return torch.from_numpy(x)


def _in_window(cam: np.ndarray) -> bool:
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    return WINDOW[0].start <= r < WINDOW[0].stop and WINDOW[1].start <= c < WINDOW[1].stop


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++"])
def test_cam_peaks_where_the_model_looks(method):
    maps = gradient_cam(WindowModel(), _blob_images(decoy=False), [0, 0, 0], method)
    assert maps.shape == (3, 40, 40) and maps.min() >= 0 and maps.max() == pytest.approx(1)
    assert all(_in_window(m) for m in maps)


def test_hirescam_ignores_a_decoy_gradcam_cannot():
    """Grad-CAM averages gradients over space, so an identical blob outside the window lights up as
    much; HiResCAM multiplies gradients and activations position by position and does not."""
    x = _blob_images(decoy=True)
    hires = gradient_cam(WindowModel(), x, [0, 0, 0], "hirescam")
    grad = gradient_cam(WindowModel(), x, [0, 0, 0], "gradcam")
    assert all(_in_window(m) for m in hires)
    assert hires[:, 5:11, 28:34].max() < 1e-6
    assert grad[:, 7:9, 30:32].min() > 0.9


def test_branch_cam_decomposes_the_logit():
    torch.manual_seed(0)
    net = AttentionGatedResNet18(num_classes=3).eval()
    x, targets = torch.randn(2, 1, 64, 64), [0, 2]
    raw = branch_contributions(net, x, targets)
    assert {k: tuple(v.shape) for k, v in raw.items()} == {"layer4": (2, 2, 2), "gate2": (2, 8, 8), "gate3": (2, 4, 4)}
    C = 3
    heads = [net.head2, net.head3, net.head4]
    bias = torch.stack(
        [
            net.fuse.bias[t] + sum(net.fuse.weight[t, k * C : (k + 1) * C] @ h.bias for k, h in enumerate(heads))
            for t in targets
        ]
    )
    with torch.no_grad():
        logits = net(x)[torch.arange(2), torch.tensor(targets)]
        total = sum(r.sum(dim=(1, 2)) for r in raw.values()) + bias
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-4)
    cam = branch_cam(AttentionGatedResNet18(3, attention=False).eval(), x, targets)
    assert cam.shape == (2, 64, 64) and 0 <= cam.min() and cam.max() <= 1


def test_every_map_at_input_resolution_in_unit_range():
    net = AttentionGatedResNet18(num_classes=3).eval()
    maps = explain_batch(net, torch.randn(2, 1, 64, 64), [1, 1], rng=np.random.default_rng(0))
    assert set(maps) == {"gradcam", "hirescam", "gradcam++", "branch_cam", "gate2", "gate3", "random"}  # no decoder
    for m in maps.values():
        assert m.shape == (2, 64, 64) and m.min() >= 0 and m.max() <= 1
    # with the decoder: every map lands on the input's pixels
    decoder = AttentionGatedResNet18(3, lesion_decoder=True).eval()
    maps = explain_batch(decoder, torch.randn(2, 1, 64, 64), [0, 2], rng=np.random.default_rng(0))
    assert set(maps) == {"gradcam", "hirescam", "gradcam++", "branch_cam", "gate2", "gate3", "decoder", "random"}
    for name, m in maps.items():
        assert m.shape == (2, 64, 64) and m.min() >= 0 and m.max() <= 1, name
        assert m.std() > 0, name  # not a flat map
    plain = explain_batch(AttentionGatedResNet18(3, attention=False).eval(), torch.randn(1, 1, 64, 64), [0])
    assert "gate2" not in plain and "gradcam" in plain


def test_decoder_map_shows_where_the_decoder_outlines_the_lesion():
    net = AttentionGatedResNet18(num_classes=3, lesion_decoder=True).eval()
    x = torch.randn(2, 1, 64, 64)
    plain = explain_batch(net, x, [0, 1], methods=("decoder", "gate2"))
    assert set(plain) == {"decoder", "gate2"} and plain["decoder"].shape == (2, 64, 64)
    # a decoder whose logits (B, 1, 8, 8) are high in one cell only: the map peaks over that cell's pixels
    blob = torch.full((2, 1, 8, 8), -6.0)
    blob[:, :, 5, 2] = 6.0
    net.lesion_decoder.forward = lambda *features: blob
    outline = explain_batch(net, x, [0, 1], methods=("decoder",))["decoder"]
    for m in outline:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert 5 * 8 <= r < 6 * 8 and 2 * 8 <= c < 3 * 8
        assert m.min() == 0 and m.max() == pytest.approx(1)
    assert "decoder" not in explain_batch(AttentionGatedResNet18(3).eval(), x, [0, 1], methods=("decoder",))


# -- metrics on hand-made maps --------------------------------------------------------------------
def test_energy_pointing_iou_known_answers():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True  # 25 of 400 px
    assert agr.energy_share(np.ones((20, 20)), mask) == pytest.approx(25 / 400)
    assert agr.energy_share(mask.astype(float), mask) == pytest.approx(1.0)
    half = np.zeros((20, 20))
    half[5:10, 5:10], half[0:5, 15:20] = 1.0, 1.0
    assert agr.energy_share(half, mask) == pytest.approx(0.5)
    peak = np.zeros((20, 20))
    peak[7, 7] = 1
    assert agr.pointing_hit(peak, mask, tolerance=0) == 1.0
    peak = np.zeros((20, 20))
    peak[7, 12] = 1  # 3 px right of the lesion
    assert agr.pointing_hit(peak, mask, tolerance=2) == 0.0
    assert agr.pointing_hit(peak, mask, tolerance=3) == 1.0
    assert agr.thresholded_iou(mask.astype(float), mask) == pytest.approx(1.0)
    wide = np.zeros((20, 20))
    wide[5:10, 5:15] = 1.0  # 50 px hot, 25 of them on the lesion
    assert agr.thresholded_iou(wide, mask) == pytest.approx(0.5)
    assert np.isnan(agr.energy_share(peak, np.zeros((20, 20), bool)))
    centre = agr.centre_map((21, 21))
    assert np.unravel_index(np.argmax(centre), centre.shape) == (10, 10)


def test_finding_regions_of_a_rectangle():
    mask = np.zeros((40, 40), bool)
    mask[10:16, 12:24] = True  # 6 px tall
    regions = agr.finding_regions(mask)
    below = np.zeros_like(mask)
    below[16:22, 12:24] = True
    np.testing.assert_array_equal(regions["below"], below)
    assert regions["above"][:10, 12:24].all() and regions["above"].sum() == 10 * 12
    assert regions["rim"][10, 15] and not regions["rim"][13, 18] and not regions["rim"][30, 30]


# -- statistics -----------------------------------------------------------------------------------
def test_paired_tests_reject_a_clear_effect_not_noise():
    rng = np.random.default_rng(1)
    base = rng.random(40)
    clear = agr.paired_test(base + 0.2 + rng.normal(0, 0.05, 40), base)
    assert clear["p"] < 1e-6 and clear["r"] > 0.9
    noise = agr.paired_test(rng.random(40), rng.random(40))
    assert noise["p"] > 0.05 and abs(noise["r"]) < 0.4
    hits = agr.paired_test(np.r_[np.ones(30), np.zeros(10)], np.r_[np.zeros(30), np.zeros(10)], binary=True)
    assert hits["test"] == "mcnemar_exact" and hits["r"] == 1.0 and hits["p"] < 1e-6
    assert agr.rank_biserial_paired(np.array([1.0, 2.0, -3.0])) == pytest.approx((1 + 2 - 3) / 6)


def test_unpaired_test_and_findings_table():
    rng = np.random.default_rng(2)
    shifted = agr.unpaired_test(rng.normal(1.5, 1, 30), rng.normal(0, 1, 30))
    assert shifted["p"] < 1e-4 and shifted["r"] > 0.6
    same = agr.unpaired_test(rng.normal(0, 1, 30), rng.normal(0, 1, 30))
    assert same["p"] > 0.05
    n = 40
    finding = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    per_image = pd.DataFrame(
        {
            "image": range(n),
            "method": "gradcam",
            "label": "cyst",
            "posterior_enhancement": finding,
            "energy_below": np.where(finding == 1, 0.4, 0.1) + rng.normal(0, 0.05, n),
        }
    )
    table = agr.findings_tests(per_image, ["gradcam"])
    assert set(table["subset"]) == {"all", "cyst"} and (table["region"] == "below").all()
    assert (table["p"] < 1e-4).all() and (table["r"] > 0.9).all()
    assert agr.findings_tests(per_image.drop(columns="posterior_enhancement"), ["gradcam"]).empty


def test_road_separates_a_faithful_map_from_its_inverse():
    """Logit = mean of the window: removing the window first must hurt more than removing the rest."""
    x = _blob_images(decoy=False)
    faithful = np.zeros((3, 40, 40), np.float32)
    faithful[:, WINDOW[0], WINDOW[1]] = 1.0
    good = road_scores(WindowModel(), x, faithful, [0, 0, 0], percentiles=(50, 80))
    bad = road_scores(WindowModel(), x, 1 - faithful, [0, 0, 0], percentiles=(50, 80))
    assert (good["road"] > bad["road"]).all()
    ranks = tie_broken_ranks(np.zeros((1, 4, 4)), np.random.default_rng(0))
    assert len(np.unique(ranks)) == 16 and ranks.min() == 0 and ranks.max() == 1
    assert normalise(np.full((1, 3, 3), 5.0)).max() == 0


# -- the command on a tiny trained run ------------------------------------------------------------
def test_explain_command_writes_overlays_and_statistics(tiny_run, tmp_path, capsys):
    # at 32 px layer4 is a 1x1 grid (a constant map); layer3 is 2x2
    out = tmp_path / "explain"
    assert (
        explain_main(
            [
                str(tiny_run),
                "--road-images",
                "2",
                "--road-percentiles",
                "50",
                "--target-layer",
                "layer3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    n_test = len(json.loads((tiny_run / "split.json").read_text())["test"])
    assert len(list((out / "overlays").glob("*.png"))) == n_test
    assert {p.name for p in out.glob("gallery_*.png")} == {
        "gallery_cyst.png",
        "gallery_lipoma.png",
        "gallery_pilomatricoma.png",
    }
    table = pd.read_csv(out / "agreement.csv")
    assert len(table) == n_test * 9  # 8 maps (the decoder's too) + the centre baseline per image
    assert table["has_mask"].all() and table["energy"].between(0, 1).all() and set(table["hit"]) <= {0, 1}
    assert table["road"].notna().sum() == 2 * 8 and "calcification" in table
    result = json.loads((out / "agreement.json").read_text())
    assert result["n_with_mask"] == n_test and result["settings"]["tolerance_px"] == 2
    assert result["checkpoint"] == "checkpoints/last.ckpt"  # the one the run tested
    rows = pd.DataFrame(result["agreement"])
    assert {"all", "cyst"} <= set(rows["subset"]) and set(rows["baseline"]) == {"random", "centre"}
    assert rows["p"].between(0, 1).all() and rows["r"].between(-1, 1).all()
    assert "Agreement with the lesion" in (out / "agreement.md").read_text()
    # a second run never overwrites, and a wrong folder is one clear line
    assert explain_main([str(tiny_run), "--out", str(out)]) == 2
    assert explain_main([str(tiny_run / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "already holds explanations" in err and "metrics_val.json: not found" in err and "Traceback" not in err


def test_explain_with_chosen_methods_still_has_its_random_baseline(tiny_run, tmp_path):
    """--methods without `random` used to crash after all the work: the baseline is always made."""
    out = tmp_path / "chosen"
    assert (
        explain_main(
            [
                str(tiny_run),
                "--methods",
                "gradcam,gate3",
                "--road-images",
                "2",
                "--road-percentiles",
                "50",
                "--target-layer",
                "layer3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "agreement.csv")
    assert set(table["method"]) == {"gradcam", "gate3", "random", "centre"}
    # a gallery of a map not computed would be empty: refused before any work
    with pytest.raises(SystemExit):
        explain_main([str(tiny_run), "--methods", "gate3", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    rows = pd.DataFrame(json.loads((out / "agreement.json").read_text())["agreement"])
    assert set(rows["method"]) == {"gradcam", "gate3"} and set(rows["baseline"]) == {"random", "centre"}
    assert "| gradcam |" in (out / "agreement.md").read_text()


# -- ROAD in batches, explain inside a sweep ------------------------------------------------------
def _library_road(model, x, maps, targets, percentiles, seed=0):
    """ROAD as it was computed before the batched version: pytorch-grad-cam's averagers, one forward
    per percentile and order."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    ranked = tie_broken_ranks(np.asarray(maps, dtype=np.float32), rng)
    wrapped, fns = LogitsOnly(model).eval(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    morf = ROADMostRelevantFirstAverage(list(percentiles))(x, ranked, fns, wrapped).reshape(-1).astype(float)
    lerf = ROADLeastRelevantFirstAverage(list(percentiles))(x, ranked, fns, wrapped).reshape(-1).astype(float)
    return {"morf": morf, "lerf": lerf, "road": (lerf - morf) / 2}


def test_batched_road_equals_the_library_per_percentile():
    x, targets = _blob_images(decoy=True), [0, 1, 0]
    window = np.zeros((3, 40, 40), np.float32)
    window[:, WINDOW[0], WINDOW[1]] = 1.0  # flat regions: ties broken at random
    maps = {"window": window, "smooth": np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)}
    for name, m in maps.items():
        want = _library_road(WindowModel(), x, m, targets, (20, 50, 80), seed=3)
        for workers in (1, 3):  # threads solve, the noise is drawn in the library's order either way
            got = road_scores(WindowModel(), x, m, targets, (20, 50, 80), seed=3, workers=workers)
            for key in ("morf", "lerf", "road"):
                np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{name} {key}")
    keep = kept_pixels(tie_broken_ranks(maps["smooth"], np.random.default_rng(0))[0], 40, "lerf")
    a, b = imputation_system(keep, x[0].numpy())
    a_lib, b_lib = NoisyLinearImputer.setup_sparse_system(keep, x[0].numpy(), neighbors_weights)
    assert abs(a - a_lib.tocsc()).max() == 0 and np.array_equal(b, b_lib)  # the same system, built at once


def test_maps_metrics_equal_image_metrics_per_map():
    rng = np.random.default_rng(4)
    mask = np.zeros((48, 48), bool)
    mask[12:30, 8:26] = True
    maps = {k: rng.random((48, 48)).astype(np.float32) for k in ("a", "b")}
    for tolerance in (None, 0, 4):
        got = maps_metrics(maps, mask, tolerance, 0.4)
        for name, cam in maps.items():
            assert got[name] == pytest.approx(agr.image_metrics(cam, mask, tolerance, 0.4), nan_ok=True)
    assert all(np.isnan(v) for v in maps_metrics(maps, None)["a"].values())


def test_explain_config_composes_off_by_default_on_in_the_experiments():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        default = compose(config_name="train")
        on = {e: compose(config_name="train", overrides=[f"experiment={e}"]) for e in ("recipe", "paper")}
        chosen = compose(
            config_name="train",
            overrides=["explain.enabled=true", "explain.methods=[gradcam,gate2]", "+explain.seed=3"],
        )
        wrong = compose(config_name="train", overrides=["explain.enabled=true", "explain.methods=[gradcm]"])
    assert default.explain.enabled is False and explain_settings(default) is None
    assert default.explain.road_images == ROAD_IMAGES  # the config and the command line agree
    assert explain_settings(on["paper"]) == ExplainSettings()
    assert explain_settings(on["recipe"]) == ExplainSettings(gallery_method="branch_cam")
    settings = explain_settings(chosen)
    assert settings.methods == ("gradcam", "gate2") and settings.seed == 3 and settings.road_images == ROAD_IMAGES
    with pytest.raises(ConfigError, match="explain.methods: unknown map"):
        explain_settings(wrong)
    with pytest.raises(ConfigError, match="explain.road_image: not a setting"):
        ExplainSettings.from_options({"road_image": 3})
    with pytest.raises(ConfigError, match="explain.gallery_method=gate2: not among the maps computed"):
        ExplainSettings.from_options({"methods": ["gradcam"], "gallery_method": "gate2"})


def test_training_explains_and_the_sweep_report_pools_the_folds(tiny_run, tmp_path):
    """experiment=recipe explains its test fold after the test (tiny_run did); two folds with
    explanations give the report a pooled agreement table, ROAD table and galleries."""
    result = json.loads((tiny_run / "explain" / "agreement.json").read_text())
    n_test = len(json.loads((tiny_run / "split.json").read_text())["test"])
    assert result["n_test"] == n_test and result["settings"]["road_seconds"] > 0
    assert result["settings"]["road_seconds_per_image"] > 0 and (tiny_run / "explain" / "gallery_cases.npz").is_file()
    sweep = tmp_path / "sweep"
    for k in (0, 1):  # two "folds" (the same one twice: enough for the plumbing)
        (sweep / f"fold_{k}").mkdir(parents=True)
        for name in ("predictions_test.csv", "split.json", ".hydra", "explain"):
            copy = shutil.copytree if (tiny_run / name).is_dir() else shutil.copy
            copy(tiny_run / name, sweep / f"fold_{k}" / name)
    console = Console(file=io.StringIO())
    build_report(sweep, n_boot=100, console=console, sections=explanation_sections(sweep, console))
    md = (sweep / "report.md").read_text()
    assert "### Explanations pooled over folds" in md and "| branch CAM | " in md and "| random | " in md
    assert f"Folds 0, 1: {2 * n_test} test images" in md and "Faithfulness (ROAD)" in md
    pooled = pd.read_csv(sweep / "explain" / "agreement.csv")
    assert set(pooled["fold"]) == {0, 1} and len(pooled) == 2 * len(pd.read_csv(tiny_run / "explain" / "agreement.csv"))
    assert "Test folds, pooled" in (sweep / "explain" / "agreement.md").read_text()
    for cls in ("cyst", "lipoma", "pilomatricoma"):
        assert f"](figures/explain_gallery_{cls}.png)" in md
        assert (sweep / "figures" / f"explain_gallery_{cls}.png").read_bytes()[:4] == b"\x89PNG"
    # `python -m skintumor.report SWEEP` (what make cv runs after a failed fold) pools them too
    from skintumor.report import main as report_main

    (sweep / "report.md").unlink()
    assert report_main([str(sweep), "--n-boot", "100"]) == 0
    assert "### Explanations pooled over folds" in (sweep / "report.md").read_text()
    # without explained folds: no section, the report as before
    shutil.rmtree(sweep / "fold_0" / "explain")
    shutil.rmtree(sweep / "fold_1" / "explain")
    assert explanation_sections(sweep, console) == []
