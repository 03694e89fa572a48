"""Do the maps agree with the physicians' lesion outlines and findings? Metrics and paired statistics.

Per image (maps (H, W) in [0, 1], lesion mask (H, W) bool):
    energy  energy-based pointing game: share of the map's energy inside the lesion, sum(m * mask) / sum(m)
            (Wang et al., Score-CAM 2020). Chance level is the lesion's area share.
    hit     pointing game (Zhang et al. 2018): 1 if the map's maximum lies inside the lesion grown by
            ``tolerance`` px (default: 15 px at 224 px, scaled to the image), else 0.
    iou     IoU of the map thresholded at ``threshold`` (default 0.5 of its maximum) with the lesion.

Baselines: ``random`` (smooth noise, see :mod:`skintumor.explain.cam`) and ``centre`` (a centred Gaussian,
sigma = 1/4 of the side): a map must beat both to show it looks at the lesion rather than anywhere or
at the middle of the frame, where ultrasound lesions usually sit.

Paired tests (same images, two maps): Wilcoxon signed-rank (``scipy.stats.wilcoxon``) for energy and
IoU, with the matched-pairs rank-biserial correlation r in [-1, 1] (share of rank mass favouring the
method minus the share favouring the baseline); exact McNemar (a binomial test on discordant pairs)
for the binary hit, with r = (b - c) / (b + c), the same quantity for 0/1 data. p-values are
two-sided; q-values are Benjamini-Hochberg over the whole table.

Findings with a place (:data:`FINDING_REGIONS`): the map's energy share in the finding's region
(posterior enhancement/shadowing: the band below the lesion; calcification, internal striations:
inside; rim: the lesion's border band; punctum: the column above the lesion). Images with and
without a finding are independent groups with bounded, skewed scores, so the test is Mann-Whitney U
(two-sided) with the rank-biserial r = 2 U / (n1 n2) - 1; it is run within each class too, because
findings go with classes (a pooled test alone would measure the class, not the finding).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import ndimage, stats

BASELINES = ("random", "centre")
METRICS = ("energy", "hit", "iou")
FINDING_REGIONS = {
    "posterior_enhancement": "below",
    "posterior_shadowing": "below",
    "calcification": "inside",
    "internal_striations": "inside",
    "rim": "rim",
    "punctum": "above",
}


# -- per-image metrics --------------------------------------------------------------------------
def energy_share(cam: np.ndarray, region: np.ndarray) -> float:
    """sum(cam * region) / sum(cam); NaN for an empty region or an all-zero map."""
    total = float(cam.sum())
    if not region.any() or total <= 0:
        return float("nan")
    return float(cam[region].sum() / total)


def default_tolerance(size: int) -> int:
    """The pointing game's 15 px at 224 px, scaled to an image side of ``size`` px."""
    return int(round(15 * size / 224))


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: int | None = None) -> float:
    """1.0 if the map's maximum lies in the mask grown by ``tolerance`` px (a disc), else 0.0; NaN without a lesion."""
    if not mask.any():
        return float("nan")
    tolerance = default_tolerance(mask.shape[0]) if tolerance is None else tolerance
    if tolerance > 0:
        yy, xx = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
        mask = ndimage.binary_dilation(mask, structure=yy**2 + xx**2 <= tolerance**2)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return float(mask[peak])


def thresholded_iou(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``cam >= threshold * max(cam)`` with the mask; NaN without a lesion."""
    if not mask.any():
        return float("nan")
    top = cam.max()
    hot = cam >= threshold * top if top > 0 else np.zeros_like(mask)
    return float((hot & mask).sum() / (hot | mask).sum())


def centre_map(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """Centre-bias baseline: a Gaussian at the image centre, sigma = ``sigma`` x side, peak 1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-0.5 * (((yy - (h - 1) / 2) / (sigma * h)) ** 2 + ((xx - (w - 1) / 2) / (sigma * w)) ** 2)).astype(
        np.float32
    )


def finding_regions(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Places where findings show, from the lesion mask (H, W) bool -> {"inside", "below", "above", "rim"}.

    below: in the lesion's central columns (height >= half the tallest), from the lesion's bottom down
        one lesion height, the band where posterior enhancement or shadowing appears;
    above: the same columns from the top of the image to the lesion (a punctum's tract to the skin);
    rim: the border band, the mask grown minus shrunk by ~3 % of the side.
    """
    h, w = mask.shape
    empty = np.zeros_like(mask, dtype=bool)
    if not mask.any():
        return {"inside": empty, "below": empty, "above": empty, "rim": empty}
    heights = mask.sum(axis=0)
    central = np.flatnonzero(heights >= 0.5 * heights.max())
    below, above = empty.copy(), empty.copy()
    tallest = int(heights.max())
    for col in central:
        lesion_rows = np.flatnonzero(mask[:, col])
        below[lesion_rows[-1] + 1 : min(h, lesion_rows[-1] + 1 + tallest), col] = True
        above[: lesion_rows[0], col] = True
    band = max(1, int(round(0.03 * max(h, w))))
    rim = ndimage.binary_dilation(mask, iterations=band) & ~ndimage.binary_erosion(mask, iterations=band)
    return {"inside": mask.astype(bool), "below": below & ~mask, "above": above & ~mask, "rim": rim}


def image_metrics(
    cam: np.ndarray, mask: np.ndarray | None, tolerance: int | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """energy, hit, iou and the energy share in every finding region, for one map; NaN without a lesion."""
    if mask is None or not mask.any():
        return {m: float("nan") for m in METRICS} | {
            f"energy_{r}": float("nan") for r in ("inside", "below", "above", "rim")
        }
    out = {
        "energy": energy_share(cam, mask),
        "hit": pointing_hit(cam, mask, tolerance),
        "iou": thresholded_iou(cam, mask, threshold),
    }
    return out | {f"energy_{name}": energy_share(cam, region) for name, region in finding_regions(mask).items()}


# -- statistics ---------------------------------------------------------------------------------
def rank_biserial_paired(diff: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of differences (zeros dropped): (R+ - R-) / (R+ + R-)."""
    diff = diff[diff != 0]
    if not len(diff):
        return 0.0
    ranks = stats.rankdata(np.abs(diff))
    return float((ranks[diff > 0].sum() - ranks[diff < 0].sum()) / ranks.sum())


def paired_test(method: np.ndarray, baseline: np.ndarray, binary: bool = False) -> dict:
    """Two-sided paired test of ``method`` against ``baseline`` on the same images (NaN pairs dropped).

    Continuous: Wilcoxon signed-rank + rank-biserial r. Binary (0/1): exact McNemar + r = (b - c)/(b + c).
    """
    method, baseline = np.asarray(method, float), np.asarray(baseline, float)
    keep = ~(np.isnan(method) | np.isnan(baseline))
    a, b = method[keep], baseline[keep]
    result = {
        "n": int(keep.sum()),
        "method_value": float(np.mean(a) if binary else np.median(a)) if len(a) else float("nan"),
        "baseline_value": float(np.mean(b) if binary else np.median(b)) if len(b) else float("nan"),
        "test": "mcnemar_exact" if binary else "wilcoxon",
        "r": float("nan"),
        "p": float("nan"),
    }
    diff = a - b
    if binary:
        wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
        if wins + losses:
            result["r"] = (wins - losses) / (wins + losses)
            result["p"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue)
        else:
            result["r"], result["p"] = 0.0, 1.0
        return result
    if np.any(diff != 0):
        with warnings.catch_warnings():  # small-n normal-approximation notices
            warnings.simplefilter("ignore")
            result["p"] = float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
        result["r"] = rank_biserial_paired(diff)
    elif len(diff):
        result["r"], result["p"] = 0.0, 1.0
    return result


def unpaired_test(with_finding: np.ndarray, without: np.ndarray) -> dict:
    """Mann-Whitney U (two-sided) of scores in images with vs without a finding, rank-biserial r = 2U/(n1 n2) - 1."""
    a = np.asarray(with_finding, float)
    b = np.asarray(without, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    result = {
        "n_with": len(a),
        "n_without": len(b),
        "median_with": float(np.median(a)) if len(a) else float("nan"),
        "median_without": float(np.median(b)) if len(b) else float("nan"),
        "r": float("nan"),
        "p": float("nan"),
    }
    if len(a) and len(b):
        test = stats.mannwhitneyu(a, b, alternative="two-sided")
        result["r"] = float(2 * test.statistic / (len(a) * len(b)) - 1)
        result["p"] = float(test.pvalue)
    return result


def add_q_values(table: pd.DataFrame) -> pd.DataFrame:
    """Benjamini-Hochberg q-values over every finite p in the table (column ``q``)."""
    table = table.copy()
    table["q"] = np.nan
    finite = table["p"].notna()
    if finite.any():
        table.loc[finite, "q"] = stats.false_discovery_control(table.loc[finite, "p"].to_numpy())
    return table


def compare_to_baselines(
    per_image: pd.DataFrame, methods, baselines=BASELINES, metrics=METRICS, group: str = "label"
) -> pd.DataFrame:
    """Every method against every baseline on every metric, for all images and per ``group`` value.

    ``per_image``: long table with columns ``image, method, <group>`` and the metric columns.
    Returns one row per (subset, method, baseline, metric) with n, method/baseline summaries, r, p, q.
    """
    rows = []
    subsets = [("all", per_image)] + [(str(k), g) for k, g in per_image.groupby(group, sort=True)]
    for subset, frame in subsets:
        wide = {m: frame[frame["method"] == m].set_index("image") for m in set(methods) | set(baselines)}
        for method in methods:
            for baseline in baselines:
                if method == baseline or method not in wide or baseline not in wide:
                    continue
                a, b = wide[method].align(wide[baseline], join="inner", axis=0)
                for metric in metrics:
                    test = paired_test(a[metric].to_numpy(), b[metric].to_numpy(), binary=metric == "hit")
                    rows.append({"subset": subset, "method": method, "baseline": baseline, "metric": metric} | test)
    return add_q_values(pd.DataFrame(rows))


def findings_tests(per_image: pd.DataFrame, methods, findings=None, group: str = "label") -> pd.DataFrame:
    """Energy in each finding's region, images with vs without the finding (Mann-Whitney U), pooled and per class.

    ``findings`` default: the columns of :data:`FINDING_REGIONS` present in ``per_image`` (0/1 values);
    an empty table when there are none. Groups with fewer than 3 images on either side are skipped.
    """
    findings = [f for f in (findings or FINDING_REGIONS) if f in per_image.columns]
    rows = []
    for finding in findings:
        column = f"energy_{FINDING_REGIONS[finding]}"
        present = pd.to_numeric(per_image[finding], errors="coerce")
        for method in methods:
            frame = per_image[(per_image["method"] == method) & present.notna() & per_image[column].notna()]
            flags = present[frame.index].astype(int)
            subsets = [("all", frame)] + [(str(k), g) for k, g in frame.groupby(group, sort=True)]
            for subset, part in subsets:
                has = flags[part.index] == 1
                if has.sum() < 3 or (~has).sum() < 3:
                    continue
                test = unpaired_test(part.loc[has, column].to_numpy(), part.loc[~has, column].to_numpy())
                rows.append(
                    {
                        "finding": finding,
                        "region": FINDING_REGIONS[finding],
                        "subset": subset,
                        "method": method,
                        "test": "mannwhitneyu",
                    }
                    | test
                )
    columns = [
        "finding",
        "region",
        "subset",
        "method",
        "test",
        "n_with",
        "n_without",
        "median_with",
        "median_without",
        "r",
        "p",
    ]
    return add_q_values(pd.DataFrame(rows, columns=columns))
