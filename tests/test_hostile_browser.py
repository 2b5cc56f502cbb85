"""Hostile records in headless Chromium (issue 22): no payload runs, on the pages or in site search."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from catalog.site import build_site
from tests.catalog_fixtures import write_catalog
from tests.test_hostile_site import PAYLOADS, hostile_records
from tests.test_site_browser import CHROME_ARGS, CHROMIUM, QuietHandler, require_chromium

pytestmark = [pytest.mark.browser]

# Defined before any page script runs: a payload that executes leaves a trace even without a dialog.
TRAP = "window.__fired = []; window.alert = window.confirm = window.prompt = (x) => window.__fired.push(x);"

# What a reader does to the content (hover, focus) plus the events injected handlers hang on; and a
# javascript: link would run on click, so any such href counts as fired.
TOUCH = """() => {
  for (const el of document.querySelectorAll('article *')) {
    for (const type of ['mouseover', 'mouseenter', 'focus', 'load', 'error', 'toggle'])
      el.dispatchEvent(new Event(type));
    const href = (el.getAttribute('href') || '') + (el.getAttribute('src') || '');
    if (/^\\s*(javascript|data|vbscript):/i.test(href)) window.__fired.push('href ' + href);
  }
}"""


def test_hostile_pages_and_search_run_nothing(tmp_path, monkeypatch):
    require_chromium()
    papers = write_catalog(tmp_path / "papers", hostile_records())
    monkeypatch.setenv("ATLAS_SITE_NO_SIMILAR", "1")
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("catalog.site_data.cached_registry_index", lambda cache_dir: {})
    build_site(papers, tmp_path / "site")
    # the control: a page with a live handler and a javascript: link, which the harness must catch
    (tmp_path / "site" / "control.html").write_text(
        '<html><body><article><span onmouseover="alert(\'control\')">x</span>'
        '<a href="javascript:void(0)">y</a></article></body></html>')
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    from playwright.sync_api import sync_playwright

    dialogs, fired = [], {}
    paths = ["/", "/years/", "/venues/", "/themes/quantization/", "/themes/benchmarks/",
             "/taxonomy/quantization--ptq--weight-only/", "/papers/hostile-multi/", "/papers/hostile-report/",
             *[f"/papers/hostile-{i}/" for i in range(len(PAYLOADS))]]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
            page = browser.new_page()
            page.add_init_script(TRAP)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for path in paths:
                page.goto(base + path, wait_until="load")
                page.evaluate(TOUCH)
                fired[path] = page.evaluate("window.__fired")
            page.goto(base + "/control.html", wait_until="load")
            page.evaluate(TOUCH)
            control = page.evaluate("window.__fired")
            page.goto(base + "/", wait_until="networkidle")
            for query in ("weights", "alert", "script", "onerror", "Ada"):
                box = page.locator("input.md-search__input")
                box.click()
                box.fill("")
                page.keyboard.type(query, delay=30)
                # results render from the search index as HTML: let them reach the page
                if query == "weights":  # in every record's summary: results must appear
                    page.locator(".md-search-result__item").first.wait_for(timeout=30000)
                page.wait_for_timeout(1000)
                page.evaluate(TOUCH.replace("article *", ".md-search-result *"))
                fired[f"search {query}"] = page.evaluate("window.__fired")
            browser.close()
    finally:
        server.shutdown()
    assert control == ["control", "href javascript:void(0)"], control  # the harness sees live payloads
    assert not dialogs
    assert not {k: v for k, v in fired.items() if v}
