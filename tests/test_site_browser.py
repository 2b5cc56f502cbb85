"""The real catalog's site in headless Chromium, as a reader uses it. Screenshots: build/screenshots/."""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from catalog.site import build_site

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


pytestmark = [pytest.mark.browser, pytest.mark.slow]


def require_chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    require_chromium()
    site = tmp_path_factory.mktemp("site")
    build_site(Path(os.environ.get("ATLAS_TEST_PAPERS", ROOT / "papers")), site)
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(served_site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="networkidle")
    return page, errors


@pytest.mark.parametrize("path,name", [("/", "home"), ("/papers/gptq/", "paper-gptq"),
                                       ("/themes/pruning/", "theme-pruning")])
def test_pages_load_without_console_errors(browser, served_site, path, name):
    page, errors = open_page(browser, served_site + path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
    assert page.locator("h1").first.is_visible()
    assert not errors, errors
    page.close()


def test_search_box_finds_gptq(browser, served_site):
    page, errors = open_page(browser, served_site + "/")
    page.locator("input.md-search__input").click()
    page.keyboard.type("GPTQ", delay=50)
    result = page.locator(".md-search-result__item").first
    result.wait_for(timeout=15000)
    assert "GPTQ" in page.locator(".md-search-result").inner_text()
    page.screenshot(path=str(SHOTS / "search-gptq.png"))
    assert not errors, errors
    page.close()


def test_paper_links_to_theme_and_related(browser, served_site):
    page, _ = open_page(browser, served_site + "/papers/gptq/")
    page.locator("article a[href*='themes/quantization']").first.click()
    page.wait_for_load_state("networkidle")
    assert page.url.rstrip("/").endswith("/themes/quantization")
    assert "Quantization" in page.locator("h1").first.inner_text()
    page.goto(served_site + "/papers/gptq/")
    related = page.locator("h2#related-papers + ul a").first
    title = related.inner_text()
    related.click()
    page.wait_for_load_state("networkidle")
    assert "/papers/" in page.url and "/papers/gptq" not in page.url
    assert page.locator("h1").first.inner_text().rstrip("¶").strip() == title.strip()
    page.close()


def test_results_page_sorts_filters_and_links_plots(browser, served_site):
    """The Results page's local script sorts by a numeric column and filters; plot points link papers."""
    page, errors = open_page(browser, served_site + "/results/")
    table = page.locator("table.atlas-results-table")
    rows = table.locator("tbody tr")
    n = rows.count()
    assert n > 0
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    col = headers.index("bits/weight")
    table.locator("thead th").nth(col).click()

    def column_values():
        cells = table.locator(f"tbody tr:not([hidden]) td:nth-child({col + 1})").evaluate_all(
            "cells => cells.map(c => c.getAttribute('data-v'))")
        return [float(v) for v in cells if v]

    values = column_values()
    assert values == sorted(values) and len(values) > 1
    table.locator("thead th").nth(col).click()
    assert column_values() == sorted(values, reverse=True)
    page.locator(".atlas-filter").fill("gptq")
    visible = table.locator("tbody tr:not([hidden])")
    assert 0 < visible.count() < n
    assert all("gptq" in t.lower() for t in visible.all_inner_texts())
    page.locator(".atlas-filter").fill("")
    page.locator(".atlas-family").select_option("pruning")
    assert set(table.locator("tbody tr:not([hidden])").evaluate_all(
        "rows => rows.map(r => r.dataset.family)")) == {"pruning"}
    page.screenshot(path=str(SHOTS / "results.png"), full_page=False)
    assert page.locator(".atlas-plot svg").count() >= 3
    link = page.locator(".atlas-plot svg a").first
    href = link.get_attribute("xlink:href") or link.get_attribute("href")
    assert href.startswith("../papers/")
    page.locator(".atlas-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "results-plot.png"), full_page=False)
    assert not errors, errors
    page.close()
