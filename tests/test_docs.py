"""The documentation: every config option has a meaning, the generated configuration page is current,
the site builds strictly (no broken link or anchor), and the pages keep to their limits."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("config_reference", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


config_reference = _load_generator()


def test_every_config_option_has_a_meaning():
    """Every key of every file in skintumor/conf/ has a comment (its own or the file it builds on)."""
    ref = config_reference.Reference()
    assert not ref.missing, "add a YAML comment saying what each means:\n" + "\n".join(ref.missing)


def test_every_config_key_is_on_the_page():
    ref = config_reference.Reference()
    page = config_reference.PAGE.read_text()
    keys = {f.full(e.path) for f in ref.files for e in f.entries if is_option(e)}
    absent = sorted(k for k in keys if f"`{k}`" not in page)
    assert not absent, f"keys missing from docs/configuration.md: {absent}"


def is_option(entry) -> bool:
    """A value, or an object Hydra builds; not a nested _target_ (its object's row shows it), nor a plain
    mapping such as model.loss, which only groups its keys."""
    if entry.path[-1] == "_target_":
        return len(entry.path) == 1
    return not entry.mapping or entry.target is not None


def test_configuration_page_is_current():
    text = config_reference.render(config_reference.Reference())
    assert config_reference.PAGE.read_text() == text, (
        f"docs/configuration.md is out of date: run `{config_reference.REGENERATE}`"
    )


def test_a_key_without_a_comment_is_reported(tmp_path):
    """The check itself: an option file without a description and a key without a meaning are both caught."""
    (tmp_path / "data").mkdir()
    (tmp_path / "train.yaml").write_text("# Train.\ndefaults:\n  - _self_\n  - data: a\n\nseed: 42   # the seed\n")
    (tmp_path / "data" / "a.yaml").write_text("# Source a.\nroot: null   # the folder\nsize: 3\n")
    (tmp_path / "data" / "b.yaml").write_text("defaults:\n  - a\nroot: /x\n")
    ref = config_reference.Reference(tmp_path)
    missing = "\n".join(ref.missing)
    assert "data.size has no comment" in missing
    assert "data=b" in missing  # no leading comment
    assert "data.root" not in missing  # b.yaml's root takes a.yaml's meaning
    assert "seed" not in missing
    problems = config_reference.problems(tmp_path, tmp_path / "configuration.md")
    assert any("out of date" in p for p in problems)


def test_comment_reading(tmp_path):
    """Comments beside a key, above it, continued on the next line; the file header is the description."""
    (tmp_path / "train.yaml").write_text(
        "# What this is.\n"
        "#   python -m x   # a command\n"
        "defaults:\n  # the groups\n  - _self_\n"
        "# right after the list\n"
        "z: 0\n\n"
        "a: 1        # beside\n"
        "            # and continued\n"
        "# above\n"
        "b: 'x # not a comment'\n"
        "c:\n"
        "  # nested above\n"
        "  d: [1, 2]   # nested beside\n"
    )
    f = config_reference.read_conf_file(tmp_path / "train.yaml", tmp_path)
    meanings = {".".join(e.path): (e.raw, e.comment) for e in f.entries}
    assert f.description == ["What this is.", "  python -m x   # a command"]
    assert meanings["z"] == ("0", "right after the list")
    assert meanings["a"] == ("1", "beside and continued")
    assert meanings["b"] == ("'x # not a comment'", "above")
    assert meanings["c.d"] == ("[1, 2]", "nested above: nested beside")


def test_readme_and_results_stay_small():
    assert (REPO / "README.md").stat().st_size <= 10_000
    assert (DOCS / "results.md").stat().st_size <= 30_000


def test_no_stage_or_round_numbers_outside_the_history():
    """The lab notebook (docs/history/) keeps its stages and rounds; the user's pages do not."""
    pattern = re.compile(r"\b(stage|round|issue)s?\s+#?\d+", re.IGNORECASE)
    pages = [REPO / "README.md", *(p for p in DOCS.rglob("*.md") if "history" not in p.parts)]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages for m in pattern.finditer(p.read_text())]
    assert not found, found


def test_the_lab_notebook_is_linked_once_from_results():
    link = re.compile(r"\]\((?:\.\./)*history/recipe-search\.md[)#]")
    counts = {p.relative_to(REPO).as_posix(): len(link.findall(p.read_text())) for p in DOCS.rglob("*.md")}
    counts["README.md"] = len(re.findall(r"docs/history/recipe-search\.md", (REPO / "README.md").read_text()))
    linked = {page: n for page, n in counts.items() if n and not page.startswith("docs/history/")}
    assert linked == {"docs/results.md": 1}


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    """`make docs` as CI runs it: any warning (a broken link or anchor, a docstring mkdocstrings cannot
    read, a stale configuration page) fails the strict build."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extras are not installed (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0 and not warnings, result.stderr[-5000:]
    assert (tmp_path / "site" / "configuration.html").exists()
    assert (tmp_path / "site" / "api" / "data.html").exists()
