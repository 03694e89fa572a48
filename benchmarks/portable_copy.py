"""Write a data set as the training pipeline sees it: checked manifest + images already resized.

For running benchmarks on a machine that cannot see the source (the lent GPU machine gets only the
repository): the copy holds ``manifest.csv`` (after the data check, with the near-duplicate groups
as ``group_id``) and every image and lesion mask decoded, resized to ``--size`` px exactly as the
data module does, and written losslessly. Training with ``data=csv data.options.manifest=OUT/manifest.csv
data.dedup=false`` then sees bit-identical pixels and the same folds; the script checks both.

    python benchmarks/portable_copy.py data=busi --out .busi_carry --size 128
    python benchmarks/portable_copy.py data=phantom data.root=outputs/phantom --out .phantom_carry --size 128

The copy is for a git-ignored scratch folder only: never commit data that is not ours (BUSI). The
script refuses a folder inside the repository that git would not ignore.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skintumor.data.datamodule import UltrasoundDataModule  # noqa: E402
from skintumor.data.folds import PatientGroupedFolds  # noqa: E402


def unignored_in_repo(out: Path) -> bool:
    """True where ``out`` lies inside this git checkout and git would track what is written there."""
    out = out.resolve()
    if not out.is_relative_to(REPO) or not (REPO / ".git").exists() or shutil.which("git") is None:
        return False
    # a path below it, not the folder: a pattern like ".busi_carry/" matches only a folder that exists
    check = subprocess.run(["git", "check-ignore", "-q", str(out / "manifest.csv")], cwd=REPO)
    return check.returncode == 1  # 0: ignored; 128: git failed (not a checkout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. data=busi")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out}: exists; remove it first (nothing is overwritten)")
    if unignored_in_repo(args.out):
        sys.exit(f"{args.out}: inside the repository and not ignored by git, so the copied images could be "
                 "committed; write it to .busi_carry (ignored) or outside the repository")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*args.overrides, f"data.image_size={args.size}"])
    data = {k: v for k, v in cfg.data.items() if k != "_target_"}
    if data.get("root") and not Path(data["root"]).is_absolute():
        data["root"] = str(REPO / data["root"])
    source = UltrasoundDataModule(**data)
    source.setup()
    table = source.manifest.table.copy()
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True)
    names = [f"{i:05d}.png" for i in range(len(table))]
    for name, image in zip(names, source.images):
        cv2.imwrite(str(images_dir / name), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    table["path"] = ["images/" + n for n in names]
    (args.out / "masks").mkdir()
    for name, mask in zip(names, source.masks):
        if mask is not None:
            cv2.imwrite(str(args.out / "masks" / name), mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    table["mask_path"] = ["masks/" + n if m is not None else "" for n, m in zip(names, source.masks)]
    table.to_csv(args.out / "manifest.csv", index=False)

    copy = UltrasoundDataModule(source="csv", options={"manifest": str(args.out / "manifest.csv")},
                                **{k: v for k, v in data.items() if k not in ("source", "root", "options", "dedup")},
                                dedup=False)
    copy.setup()
    same_pixels = all(np.array_equal(a, b) for a, b in zip(source.images, copy.images)) and all(
        (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        for a, b in zip(source.masks, copy.masks))
    folds = [PatientGroupedFolds(m.labels, m.groups, data["n_folds"], data["val_fraction"], data["seed"])
             for m in (source.manifest, copy.manifest)]
    same_folds = all(np.array_equal(getattr(folds[0].split(k), p), getattr(folds[1].split(k), p))
                     for k in range(data["n_folds"]) for p in ("train", "val", "test"))
    print(f"{len(table)} images -> {args.out} ({sum(f.stat().st_size for f in images_dir.iterdir()) / 2**20:.1f} MiB); "
          f"identical pixels and masks: {same_pixels}; identical folds (all {data['n_folds']}): {same_folds}")
    return 0 if same_pixels and same_folds else 1


if __name__ == "__main__":
    sys.exit(main())
