"""``report.html`` opens in a real browser, offline, with every figure drawn (headless Chromium via
Playwright, as the web page's tests; skips cleanly without them)."""

from __future__ import annotations

import pytest
from test_report import quiet_console
from test_report_page import overconfident_sweep
from test_serve_e2e import CHROMIUM, CHROMIUM_ARGS, sync_playwright

from skintumor.evaluate.report import build_report

pytestmark = pytest.mark.e2e


def test_report_html_shows_every_figure_and_section_offline(tmp_path):
    sweep = overconfident_sweep(tmp_path / "sweep")
    result = build_report(sweep, n_boot=50, console=quiet_console())
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.goto((sweep / "report.html").as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        headings = page.eval_on_selector_all("h2, h3", "els => els.map(e => e.textContent)")
        browser.close()
    # confusion (2), ROC, reliability and reliability before/after the report's temperature
    assert len(images) == len(result["figures"]) == 6
    assert all(complete and width > 100 for complete, width in images)
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []  # nothing fetched
    for title in ("Cohort", "Main results", "Calibration", "Conformal prediction sets", "Model card"):
        assert title in headings, title
