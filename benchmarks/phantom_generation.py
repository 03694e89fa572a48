"""Time the default phantom (149/74/32 patients, 698 images, 256 px) on this machine.

    python -m benchmarks.phantom_generation [--jobs 2] [--check-determinism]

Prints the wall time and the machine's load before and after (the CPU may be shared); with
--check-determinism also generates with 1 worker (wall and CPU seconds) and checks that both
outputs are byte-identical.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import tempfile
import time
from pathlib import Path

from skintumor.data.phantom import generate_phantom


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--check-determinism", action="store_true",
                        help="generate again with 1 worker and compare every file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"cores: {os.cpu_count()}, load before: {os.getloadavg()}")
        start = time.perf_counter()
        manifest = generate_phantom(Path(tmp) / "a", n_jobs=args.jobs, progress=False)
        seconds = time.perf_counter() - start
        print(f"generated {len(manifest)} images with n_jobs={args.jobs} in {seconds:.1f} s; "
              f"load after: {os.getloadavg()}")
        if args.check_determinism:
            start, cpu = time.perf_counter(), time.process_time()
            generate_phantom(Path(tmp) / "b", n_jobs=1, progress=False)
            print(f"n_jobs=1: {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU "
                  "(the CPU time does not depend on other users' load)")
            files = [p.relative_to(Path(tmp) / "a") for p in (Path(tmp) / "a").rglob("*") if p.is_file()]
            same = all(filecmp.cmp(Path(tmp) / "a" / f, Path(tmp) / "b" / f, shallow=False) for f in files)
            print(f"n_jobs={args.jobs} vs n_jobs=1: {len(files)} files, byte-identical: {same}")


if __name__ == "__main__":
    main()
