"""Augmentation: ops, presets, policy files, and (further down) the leak-free policy search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from skintumor.augment import DEFAULT_OPS, OPS, Policy, PolicyError, Step, build_augmentation, build_op, op_parameter
from skintumor.augment import compose as compose_module
from skintumor.augment.compose import Augmentation
from skintumor.errors import DataError


def scan(size: int = 128, seed: int = 0) -> np.ndarray:
    """A B-mode-like test image: bright blob, depth gradient, noise (HxW uint8)."""
    yy, xx = np.mgrid[0:size, 0:size] * (128 / size)
    blob = 100 * np.exp(-((xx - 30) ** 2 + (yy - 36) ** 2) / 150.0)
    noise = np.random.default_rng(seed).normal(0, 8, (size, size))
    return np.clip(60 + blob + 30 * yy / 128 + noise, 0, 255).astype(np.uint8)


def change(name: str, magnitude: float, image: np.ndarray) -> float:
    """Mean absolute grey-level change op ``name`` makes at ``magnitude`` (averaged over 4 seeds)."""
    outs = [Augmentation([build_op(name, magnitude)], seed=s)(image=image)["image"] for s in range(4)]
    return float(np.mean([np.abs(o.astype(float) - image).mean() for o in outs]))


# --- ops --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.low is not None])
def test_op_parameter_grows_with_magnitude_and_stays_in_range(name):
    op = OPS[name]
    values = [op_parameter(name, m) for m in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(op.low) and values[-1] == pytest.approx(op.high)


@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.low is not None and n != "color"])
def test_op_effect_grows_with_magnitude(name):
    image = scan()
    assert change(name, 1.0, image) > change(name, 0.0, image)


def test_color_is_a_no_op_on_greyscale_and_off_by_default():
    image = scan(32)
    assert change("color", 1.0, image) == 0.0
    assert {"invert", "solarize", "posterize", "color"}.isdisjoint(DEFAULT_OPS)
    assert {"speckle", "rotate", "hflip", "cutout"} <= set(DEFAULT_OPS)
    assert "vflip" not in OPS  # depth has a direction


@pytest.mark.parametrize("name", list(OPS))
def test_op_keeps_greyscale_shape_and_dtype(name):
    image = scan(48)[:, :40]
    for m in (0.0, 0.5, 1.0):
        out = Augmentation([build_op(name, m)], seed=1)(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8


def test_autocontrast_stretches_a_greyscale_image():
    image = np.linspace(60, 120, 64 * 64).reshape(64, 64).astype(np.uint8)
    out = Augmentation([build_op("autocontrast", 0.0)])(image=image)["image"]
    assert out.min() == 0 and out.max() == 255


def test_bad_op_values_are_refused():
    with pytest.raises(KeyError, match="unknown augmentation op 'vflip'"):
        build_op("vflip", 0.5)
    with pytest.raises(ValueError, match="magnitude"):
        build_op("rotate", 1.5)
    with pytest.raises(ValueError, match="p must"):
        build_op("rotate", 0.5, p=-0.1)


def test_ops_in_one_augmentation_draw_independently():
    # albumentations' own Compose(seed=...) seeds every child alike, so two p=0.5 ops fire together
    flags = []
    image = np.zeros((8, 8), np.uint8)
    image[:, :2] = 200  # left stripe: a flip moves it, an invert changes the background
    t = Augmentation([build_op("hflip", 0, p=0.5), build_op("invert", 0, p=0.5)], seed=5)
    for _ in range(200):
        out = t(image=image)["image"]
        flipped = out[0, -1] in (200, 55)
        inverted = out[4, 4] == 255
        flags.append((flipped, inverted))
    flags = np.array(flags)
    assert 60 < flags[:, 0].sum() < 140 and 60 < flags[:, 1].sum() < 140
    together = (flags[:, 0] == flags[:, 1]).mean()
    assert 0.3 < together < 0.7


def test_same_seed_same_output_and_workers_get_their_own_stream(monkeypatch):
    image = scan(64)
    policy = Policy(
        [[Step("rotate", 0.7, 0.5), Step("speckle", 0.7, 0.8)], [Step("cutout", 0.7, 0.5), Step("gamma", 0.7, 0.9)]]
    )
    run = lambda t: [t(image=image)["image"] for _ in range(6)]  # noqa: E731
    a, b, c = run(policy.augmentation(seed=3)), run(policy.augmentation(seed=3)), run(policy.augmentation(seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # two DataLoader workers (same seed, copied state) must not produce the same stream
    streams = []
    for worker_seed in (100, 101):
        t = policy.augmentation(seed=3)
        monkeypatch.setattr(compose_module, "get_worker_info", lambda s=worker_seed: types.SimpleNamespace(seed=s))
        streams.append(run(t))
    assert not all(np.array_equal(x, y) for x, y in zip(*streams))


# --- presets and factory ------------------------------------------------------------------------


def test_presets():
    image = scan(64)
    assert np.array_equal(build_augmentation("none")(image=image)["image"], image)
    t = build_augmentation("default", seed=0)
    outs = [t(image=image)["image"] for _ in range(10)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 5
    again = build_augmentation("default", seed=0)
    assert all(np.array_equal(o, again(image=image)["image"]) for o in outs)  # seeded stream
    with pytest.raises(DataError, match="unknown augmentation 'fancy'"):
        build_augmentation("fancy")
    with pytest.raises(DataError, match="needs a policy file"):
        build_augmentation("policy")


# --- policy files ---------------------------------------------------------------------------------


def example_policy() -> Policy:
    return Policy(
        [[Step("shear_x", 0.2, 0.3), Step("speckle", 0.9, 0.1)], [Step("hflip", 0.5, 0.0), Step("clahe", 0.4, 0.6)]],
        search={"fold": 0, "seed": 1},
    )


def test_policy_json_round_trip(tmp_path):
    policy = example_policy()
    path = policy.save(tmp_path / "p.json")
    assert Policy.load(path) == policy
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["ops_per_subpolicy"] == 2 and len(data["subpolicies"]) == 2
    out = build_augmentation("policy", path=path, seed=0)(image=scan(32))["image"]
    assert out.shape == (32, 32) and out.dtype == np.uint8
    with pytest.raises(PolicyError, match="already exists"):
        policy.save(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"schema": 2, "subpolicies": [[]]}', "schema 2 is not supported"),
        (
            '{"schema": 1, "subpolicies": [[{"op": "vflip", "p": 0.5, "magnitude": 0.5},'
            ' {"op": "rotate", "p": 0.5, "magnitude": 0.5}]]}',
            "step 0: unknown op 'vflip'",
        ),
        (
            '{"schema": 1, "subpolicies": [[{"op": "rotate", "p": 1.5, "magnitude": 0.5},'
            ' {"op": "rotate", "p": 0.5, "magnitude": 0.5}]]}',
            "p must be a number in \\[0, 1\\]",
        ),
        (
            '{"schema": 1, "subpolicies": [[{"op": "rotate", "p": 0.5, "magnitude": 0.5}]]}',
            "sub-policy 0 has 1 op\\(s\\), expected 2",
        ),
        ('{"schema": 1, "subpolicies": []}', "at least one sub-policy"),
        ('{"schema": 1, "subpolicies": [[{"op": "rotate", "p": 0.5}]]}', "exactly op, p, magnitude"),
        ('{"schema": 1, "subpolicy": []}', "unknown key\\(s\\) subpolicy"),
    ],
)
def test_bad_policy_file_gives_one_line_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PolicyError, match=problem) as info:
        build_augmentation("policy", path=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, DataError)


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="policy file not found"):
        Policy.load(tmp_path / "nope.json")


# --- the search ------------------------------------------------------------------------------------


def tiny_problem(n: int = 48, size: int = 32):
    """Three classes that differ in brightness, two images per patient, plus a request log."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    groups = [f"p{i // 2}" for i in range(n)]
    images = [(rng.random((size, size)) * 80 + 60 * labels[i]).astype(np.uint8) for i in range(n)]
    requested: list[int] = []

    def load(indices):
        requested.extend(int(i) for i in indices)
        return [images[i] for i in indices]

    return labels, groups, load, requested


def tiny_child(counts):
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, 2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, len(counts)),
    )
    return model, nn.functional.cross_entropy


def run_tiny_search(fold=0, **overrides):
    from skintumor.augment.search import SearchSettings, search_policy
    from skintumor.data.folds import PatientGroupedFolds

    labels, groups, load, requested = tiny_problem()
    folds = PatientGroupedFolds(labels, groups, n_splits=3, seed=0)
    settings = SearchSettings(**(dict(n_inner=2, trials=3, top_n=2, child_epochs=1, seed=7) | overrides))
    policy, results = search_policy(load, labels, folds, fold, tiny_child, settings, progress=False)
    return policy, results, folds, requested


def test_tiny_search_writes_a_valid_policy_from_the_training_part_only(tmp_path):
    policy, results, folds, requested = run_tiny_search(fold=1)
    path = policy.save(tmp_path / "policy_fold1.json")
    loaded = Policy.load(path)
    assert len(loaded) == 2 * 2 * 5  # inner folds x top_n x sub-policies per candidate
    assert loaded.search["fold"] == 1 and len(loaded.search["inner_folds"]) == 2
    for inner in loaded.search["inner_folds"]:
        assert inner["train_groups"] > 0 and inner["val_groups"] > 0 and len(inner["top"]) == 2
        scores = [s for _, s in inner["top"]]
        assert scores == sorted(scores, reverse=True)
    test = set(folds.test_indices(1).tolist())
    assert requested and not test & set(requested)
    assert set(requested) == set(folds.train_part(1).tolist())
    out = loaded.augmentation(seed=0)(image=np.zeros((32, 32), np.uint8))["image"]
    assert out.shape == (32, 32)


def test_search_is_reproducible_by_seed():
    a, *_ = run_tiny_search(seed=3)
    b, *_ = run_tiny_search(seed=3)
    c, *_ = run_tiny_search(seed=4)
    assert a.subpolicies == b.subpolicies
    assert a.subpolicies != c.subpolicies


def test_search_resumes_from_sqlite_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    _, results, *_ = run_tiny_search(storage=storage)
    assert [r.trials_done for r in results] == [3, 3]
    _, results, *_ = run_tiny_search(storage=storage, trials=4)  # resumes: one more trial, not four
    assert [r.trials_done for r in results] == [4, 4]


def test_search_settings_refuse_nonsense():
    from skintumor.augment.search import SearchSettings

    with pytest.raises(ValueError, match="unknown op"):
        SearchSettings(ops=("rotate", "vflip"))
    with pytest.raises(ValueError, match="objective"):
        SearchSettings(objective="loss")


def test_unseeded_augmentation_follows_torch_seed():
    import torch

    image = scan(32)
    outs = []
    for _ in range(2):
        torch.manual_seed(11)  # what lightning.seed_everything does
        t = build_augmentation("default")
        outs.append([t(image=image)["image"] for _ in range(5)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


# --- the command line ------------------------------------------------------------------------------

SEARCH_ARGS = (
    "data=folder",
    "data.image_size=32",
    "data.n_folds=3",
    "data.fold=2",
    "search.n_inner=2",
    "search.trials=3",
    "search.top_n=1",
    "search.child_epochs=1",
    "search.batch_size=8",
)


def _check_policy_for_training(path):
    from hydra import compose, initialize_config_dir

    from conftest import REPO

    policy = Policy.load(path)
    assert len(policy) == 2 * 1 * 5 and policy.search["fold"] == 2 and policy.search["image_size"] == 32
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["augment=policy", f"augment.path={path}"])
    out = build_augmentation(**cfg.augment)(image=np.zeros((32, 32), np.uint8))["image"]
    assert out.shape == (32, 32)


@pytest.mark.slow
def test_search_cli_writes_a_policy_training_can_use(tiny_folder, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, snapshot

    before = snapshot(tiny_folder)
    run_dir = tmp_path / "search"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skintumor.search",
            *SEARCH_ARGS,
            f"data.root={tiny_folder}",
            f"data.options.patients_csv={tiny_folder}/patients.csv",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot(tiny_folder) == before  # the user's folder is only read
    _check_policy_for_training(run_dir / "policy_fold2.json")


def test_search_config_composes_with_the_training_groups():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from skintumor.augment.search import SearchSettings

    from conftest import REPO

    conf = REPO / "conf"
    options = [
        f"{group}={p.stem}"
        for group in ("data", "experiment", "debug")
        for p in sorted(Path(conf / group).glob("*.yaml"))
        if not p.stem.startswith("_")
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for option in options:
            cfg = compose(config_name="search", overrides=[option, "data.root=/tmp"])
            assert cfg.model._target_.endswith("SkinTumorClassifier") and cfg.data.source
            settings = SearchSettings(**cfg.search)
            assert settings.trials == 100 and settings.ops == DEFAULT_OPS  # the study's protocol by default
        paper = compose(config_name="search", overrides=["experiment=paper"])
    assert (paper.search.n_inner, paper.search.top_n, paper.search.ops_per_subpolicy) == (4, 5, 2)


def test_importing_the_augmentations_makes_no_network_call():
    from conftest import REPO

    code = (
        "import urllib.request as u\n"
        "calls = []\n"
        "u.OpenerDirector.open = lambda self, *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError('offline'))\n"
        "import skintumor.augment.ops\n"
        "print(len(calls))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0"


def test_search_refuses_a_nested_judging_config(tmp_path):
    """data.nested=true keeps a stand-in test fold out of training; the search would read it, so it refuses."""
    from hydra import compose, initialize_config_dir

    from skintumor.augment.policy import PolicyError
    from skintumor.search import run_search

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="search", overrides=["data.nested=true", f"output={tmp_path}/p.json"])
    with pytest.raises(PolicyError, match="data.nested"):
        run_search(cfg)
    assert not (tmp_path / "p.json").exists()
