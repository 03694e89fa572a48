"""The package as users install it: configs inside ``skintumor/conf``, console scripts, a wheel that trains."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from conftest import REPO

GROUPS = ("augment", "callbacks", "data", "debug", "experiment", "hydra", "logger", "model", "paths", "trainer")


def _yaml_files(root) -> set[str]:
    """Relative paths of every .yaml file under a directory or an importlib Traversable."""
    found, stack = set(), [(root, "")]
    while stack:
        node, prefix = stack.pop()
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                stack.append((child, f"{name}/"))
            elif child.name.endswith(".yaml"):
                found.add(name)
    return found


def test_configs_ship_inside_the_package():
    conf = resources.files("skintumor") / "conf"
    assert (conf / "train.yaml").is_file() and (conf / "search.yaml").is_file()
    assert (conf / "__init__.py").is_file()  # Hydra's pkg:// source ignores a directory without one
    defaults = yaml.safe_load((conf / "train.yaml").read_text())["defaults"]
    named = {next(iter(d)) for d in defaults if isinstance(d, dict)}
    assert named <= set(GROUPS), named - set(GROUPS)
    for group in GROUPS:
        assert (conf / group).is_dir(), group
        assert any(p.name.endswith(".yaml") for p in (conf / group).iterdir()), group
    assert (conf / "hydra" / "launcher" / "parallel.yaml").is_file()


def test_repo_conf_is_a_link_to_the_package_configs():
    link = REPO / "conf"
    assert link.is_symlink() and os.readlink(link) == "skintumor/conf"  # relative: survives a moved checkout
    assert link.resolve() == (REPO / "skintumor" / "conf").resolve()
    assert _yaml_files(link) == _yaml_files(resources.files("skintumor") / "conf")


def test_entry_point_config_module_composes():
    """What ``skintumor-train`` does: compose from ``pkg://skintumor.conf``, not from a directory on disk."""
    with initialize_config_module(config_module="skintumor.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=folder", "data.root=/tmp", "experiment=paper"])
        assert cfg.model.optimizer.lr == 1e-4 and cfg.data.source
        assert compose(config_name="search").task_name == "search"


def test_pyproject_declares_scripts_package_data_and_license():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert scripts["skintumor"] == "skintumor.__main__:main"
    assert scripts["skintumor-train"] == "skintumor.train:main"
    assert "conf/*.yaml" in project["tool"]["setuptools"]["package-data"]["skintumor"]
    assert project["project"]["license"] == "MIT" and (REPO / "LICENSE").is_file()
    assert "MIT" in (REPO / "LICENSE").read_text()


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so setuptools' build/ and egg-info never land in the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "skintumor", src / "skintumor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("skintumor-*.whl")
    return wheel


@pytest.mark.slow  # wheel build, a fresh venv with pip, and a 1-epoch training run from it: ~1 min on 2 cores
def test_installed_wheel_trains_from_anywhere(tmp_path, tiny_folder):
    wheel = _build_wheel(tmp_path)
    listing = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheel)], check=True, capture_output=True, text=True
    ).stdout
    assert "skintumor/conf/train.yaml" in listing and "skintumor/conf/data/folder.yaml" in listing
    assert "dist-info/licenses/LICENSE" in listing

    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # install before the dependencies' site-packages is linked in: pip then sees no other skintumor install
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    # reuse this interpreter's dependencies (torch & co.) instead of installing them again; a bare path
    # line adds the directory only (its .pth files, e.g. the checkout's editable hook, are not run)
    (venv_site,) = (venv / "lib").glob("python3.*/site-packages")
    (venv_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import skintumor; print(skintumor.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            str(venv / "bin" / "skintumor-train"),
            "data=folder",
            f"data.root={tiny_folder}",
            f"data.options.patients_csv={tiny_folder}/patients.csv",
            "data.image_size=32",
            "data.n_folds=3",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "logger=csv",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "predictions_test.csv").is_file()

    help_text = subprocess.run(
        [str(venv / "bin" / "skintumor"), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0, help_text.stderr[-2000:]


def test_make_estimate_runs_both_recipes_on_an_unused_partition_seed_resumably():
    """The headline estimate: paper and recipe on BUSI with data.seed=1000 (never used while the recipe was
    chosen: 42, 1, 2), into fixed sweep directories, so the same command again resumes fold by fold."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shown = subprocess.run(["make", "-n", "estimate"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "for exp in paper recipe" in shown and "data=busi data.seed=1000 data.fold=0,1,2,3,4" in shown
    assert "hydra.sweep.dir=$dir/$exp" in shown and "dir=outputs/estimate/busi_seed1000" in shown  # no time stamp
    assert "skintumor.report $dir/recipe $dir/paper" in shown
    with initialize_config_module(config_module="skintumor.conf", version_base="1.3"):
        for experiment in ("paper", "recipe"):
            cfg = compose(config_name="train", overrides=[f"experiment={experiment}", "data=busi", "data.seed=1000"])
            assert cfg.data.seed == 1000 and cfg.data.n_folds == 5 and cfg.data.source == "busi"
