"""Time the data check on a real folder and count duplicate groups per threshold.

    python -m benchmarks.realdata_check [ROOT] [--source busi]   # from the repo root

Prints markdown: time to build the manifest, to decode + hash every image and mask (the check),
to compare all pairs, the duplicate pairs / groups / label conflicts for several thresholds, and
how much the scan-area crop would cut.
"""
from __future__ import annotations

import argparse
import time
import warnings

from skintumor.data.check import check_manifest, decode_manifest
from skintumor.data.dedup import find_duplicates
from skintumor.data.scan_area import find_scan_area
from skintumor.data.sources import BUSI_ROOT, load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=BUSI_ROOT)
    parser.add_argument("--source", default="busi")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = load_source(args.source, root=args.root)
    t1 = time.perf_counter()
    decoded = decode_manifest(manifest)
    t2 = time.perf_counter()
    report = check_manifest(manifest, decoded)
    t3 = time.perf_counter()
    print(f"{len(manifest)} images from {args.root} (source {args.source})\n")
    print("| step | seconds |\n|---|---|")
    print(f"| build manifest | {t1 - t0:.2f} |")
    print(f"| decode images + masks, hash | {t2 - t1:.2f} |")
    print(f"| compare all pairs, group, report | {t3 - t2:.2f} |")
    print(f"| whole check | {t3 - t0:.2f} |\n")
    print(f"errors: {len(report.errors)}\n")
    print("| max_distance | pairs | exact | groups | images in groups | label conflicts |\n|---|---|---|---|---|---|")
    for distance in (0, 8, 16, 24, 28, 32):
        found = find_duplicates(manifest, hashes=decoded.hashes, max_distance=distance)
        print(f"| {distance} | {len(found.pairs)} | {len(found.exact_pairs)} | {len(found.groups)} | "
              f"{sum(len(g) for g in found.groups)} | {len(found.conflicts)} |")
    t4 = time.perf_counter()
    kept = []
    for image in decoded.images:
        if image is not None:
            y0, y1, x0, x1 = find_scan_area(image)
            kept.append((y1 - y0) * (x1 - x0) / image.size)
    t5 = time.perf_counter()
    cut = sum(k < 0.95 for k in kept)
    print(f"\nscan-area crop: {cut} of {len(kept)} images lose more than 5% of their area "
          f"(smallest kept share {min(kept):.2f}); find_scan_area on all: {t5 - t4:.2f} s")


if __name__ == "__main__":
    main()
