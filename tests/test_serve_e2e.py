"""``skintumor serve`` in a real browser: uvicorn on 127.0.0.1, headless Chromium driven by Playwright.

Run with ``make test-e2e`` (deselected by default). Needs the ``playwright`` package and Debian's
Chromium at /usr/bin/chromium (``apt-get install chromium``); skips with the reason otherwise.
Saves docs/serve.png, the page with results, for the documentation (from a real model's bundle with
``SKINTUMOR_E2E_BUNDLE=model/ make test-e2e``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skintumor.deploy.bundle import export_bundle, load_bundle
from skintumor.deploy.predict import Input, Predictor
from skintumor.deploy.serve import create_app

from conftest import REPO

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "serve.png"
BUNDLE_ENV = "SKINTUMOR_E2E_BUNDLE"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
if sync_playwright is None:
    pytest.skip("the playwright package is not installed (pip install playwright)", allow_module_level=True)
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)", allow_module_level=True)


class Server:
    """uvicorn serving ``app`` on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def bundle_dir(request, tmp_path_factory) -> Path:
    """The tiny run's bundle (32 px: its layer4 is 1 x 1, so its maps are uniform), or the bundle at
    $SKINTUMOR_E2E_BUNDLE, to make docs/serve.png with a real model."""
    if os.environ.get(BUNDLE_ENV):
        return Path(os.environ[BUNDLE_ENV])
    return export_bundle(request.getfixturevalue("tiny_run"), tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def ultrasound(seed: int, shape=(300, 400)) -> np.ndarray:
    """A B-mode-like scan: speckle fading with depth, a bright skin line, a dark oval lesion with
    brighter tissue behind it (posterior enhancement)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, shape), sigma=(1.0, 1.8))
    tissue = 70 * speckle * (1.05 - 0.55 * yy) * (1 + 0.25 * np.sin(6 * xx + 3 * yy + seed))
    tissue += 120 * np.exp(-(((yy - 0.08) / 0.02) ** 2)) * speckle  # the skin line
    cy, cx = rng.uniform(0.42, 0.55), rng.uniform(0.4, 0.6)
    ry, rx = rng.uniform(0.12, 0.18), rng.uniform(0.16, 0.24)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    lesion = ndimage.gaussian_filter((inside < 1).astype(float), 2)
    behind = (yy > cy) & (np.abs(xx - cx) < rx * 0.8)
    image = tissue * (1 - 0.75 * lesion) * np.where(behind & (inside >= 1), 1.35, 1.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def shown_probabilities(card) -> dict[str, float]:
    rows = card.locator(".bar-row")
    return {
        rows.nth(i).get_attribute("data-class"): float(rows.nth(i).locator(".prob").inner_text())
        for i in range(rows.count())
    }


def test_the_page_shows_skintumor_predicts_probabilities_and_the_map(bundle_dir, browser, tmp_path):
    scans = [ultrasound(seed) for seed in range(3)]
    paths = []
    for i, array in enumerate(scans):
        paths.append(tmp_path / f"patient_{i + 1:02d}_lesion.png")
        Image.fromarray(array).save(paths[-1])
    predictor = Predictor(load_bundle(bundle_dir))
    want = {p.name: r for p, r in zip(paths, predictor.predict_files([Input(p) for p in paths], progress=False))}
    classes = predictor.classes

    with Server(create_app(bundle_dir)) as server:
        page = browser.new_page(viewport={"width": 1440, "height": 1200}, device_scale_factor=1)
        messages = []
        page.on(
            "console",
            lambda m: messages.append(m.text) if m.type == "error" and "status of 415" not in m.text else None,
        )
        page.goto(server.url)
        expect(page.locator(".notice")).to_contain_text("Research use only — not a medical device")
        expect(page.locator("#model-line")).to_contain_text(" · ".join(classes))
        expect(page.locator("#model-body")).to_contain_text("Training images")

        # one scan: the probabilities shown are skintumor predict's, to the 3 decimals shown
        page.set_input_files("#files", str(paths[0]))
        card = page.locator(".result", has=page.locator(".filename", has_text=paths[0].name))
        expect(card.locator("canvas[data-ready='1']")).to_have_count(1, timeout=30_000)
        shown = shown_probabilities(card)
        expected = dict(zip(classes, map(float, want[paths[0].name].probs)))
        assert set(shown) == set(classes)
        assert all(abs(shown[c] - expected[c]) <= 0.0005 + 1e-9 for c in classes), (shown, expected)
        expect(card.locator(".pred")).to_have_text(f"Predicted: {want[paths[0].name].pred}")
        expect(card.locator(".filename")).to_have_text(paths[0].name)

        # the opacity slider re-blends the map on the canvas without asking the server again
        canvas = card.locator("canvas")
        slider = card.locator("input[type=range]")
        before, start = canvas.evaluate("c => c.toDataURL()"), slider.input_value()
        slider.fill("0.9")
        assert canvas.evaluate("c => c.toDataURL()") != before

        # several files, one of them not a picture: the batch table, and the error on the page
        (tmp_path / "notes.png").write_text("not a picture")
        page.set_input_files("#files", [str(paths[1]), str(tmp_path / "notes.png"), str(paths[2])])
        expect(page.locator("#batch-table tbody tr")).to_have_count(4, timeout=30_000)
        expect(page.locator(".result canvas[data-ready='1']")).to_have_count(3, timeout=30_000)
        error_card = page.locator(".result.is-error")
        expect(error_card.locator(".badge")).to_have_text("Not predicted (415)")
        expect(error_card.locator(".error-text")).to_contain_text("notes.png: not an image")
        for path in paths[1:]:
            row = page.locator("#batch-table tbody tr", has_text=path.name)
            cells = row.locator("td.num")
            for k, name in enumerate(classes):
                assert abs(float(cells.nth(k).inner_text()) - float(want[path.name].probs[k])) <= 0.0005 + 1e-9, name
        with page.expect_download() as download:
            page.click("#csv")
        csv = Path(download.value.path()).read_text().splitlines()
        header = ["filename", "status", "pred", *[f"p_{c}" for c in classes], *[f"sd_{c}" for c in classes]]
        assert csv[0] == ",".join([*header, "message"])
        assert len(csv) == 5 and sum(line.startswith("notes.png,error,") for line in csv) == 1

        # the screenshot for docs/serve.png: the batch without the error, every map at its starting opacity
        page.locator(".result.is-error").evaluate("e => e.remove()")
        page.locator("#batch-table tr.is-error").evaluate("e => e.remove()")
        page.locator("#batch-count").evaluate("e => e.textContent = '(3 files)'")
        slider.fill(start)
        page.evaluate("window.scrollTo(0, 0)")
        # docs/serve.png is remade only from a real bundle: the tiny model's maps are flat
        shot = SCREENSHOT if os.environ.get(BUNDLE_ENV) else tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000
        assert not messages, messages
        page.close()


def test_the_page_asks_for_the_token_once_and_shows_api_errors(bundle_dir, browser, tmp_path):
    with Server(create_app(bundle_dir, token="correct-horse", max_upload_mb=1 / 1024)) as server:
        page = browser.new_page()
        page.goto(server.url)
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token", "correct-horse")
        page.click("#token-form button")
        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("#model-line")).to_contain_text("member")
        assert page.evaluate("sessionStorage.getItem('skintumor-token')") == "correct-horse"

        big = tmp_path / "large.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(big)
        page.set_input_files("#files", str(big))
        expect(page.locator(".result .badge")).to_have_text("Not predicted (413)", timeout=30_000)
        expect(page.locator(".result .error-text")).to_contain_text("large.png: ")
        expect(page.locator(".result .error-text")).to_contain_text("over the upload limit")
        page.close()
