"""The generated site: strict build, literal record text, no broken internal links."""

import html
import re
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

from catalog.site import build_site
from tests.catalog_fixtures import record_text, write_catalog

EVIL_TITLE = "<script>alert(1)</script> **bold** {{ config.site_name }} [link](http://x) {% raw %}"


@pytest.fixture(scope="module")
def evil_site(tmp_path_factory, monkeypatch_module):
    base = tmp_path_factory.mktemp("evil")
    papers = write_catalog(base / "papers", {
        "evil": record_text("evil", title=EVIL_TITLE.replace('"', '\\"'), related="[good]").replace(
            "Only weights are quantized",
            "Only <img src=x onerror=alert(2)> weights | are `quantized` # here"),
        "good": record_text("good", arxiv="2301.00774", year=2023, title="A Good Paper"),
    })
    monkeypatch_module.setenv("ATLAS_SITE_NO_SIMILAR", "1")
    site = base / "site"
    build_site(papers, site)
    return site


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_record_text_renders_literally(evil_site):
    page = (evil_site / "papers" / "evil" / "index.html").read_text()
    article = page.split('<article', 1)[1].split("</article>", 1)[0]
    assert "<script>alert(1)" not in article
    assert "<img src=x" not in page
    assert html.escape("<script>alert(1)</script>", quote=False) in article
    text = re.sub(r"<[^>]+>", "", article)
    assert "**bold**" in html.unescape(text)
    assert "{{ config.site_name }}" in html.unescape(text)
    assert "[link](http://x)" in html.unescape(text)
    assert "| are `quantized` # here" in html.unescape(text)


def internal_links(site: Path):
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            if re.match(r"^(https?:|mailto:|#|data:|javascript:)", href):
                continue
            yield page, href


def test_no_broken_internal_links(evil_site):
    broken = []
    for page, href in internal_links(evil_site):
        path = unquote(urldefrag(href)[0])
        # absolute links (the 404 page uses them) are relative to the site root
        target = (evil_site / path.lstrip("/") if path.startswith("/") else page.parent / path).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{page.relative_to(evil_site)} -> {href}")
    assert not broken, broken[:20]


def test_downloads_and_pages_exist(evil_site):
    for path in ("atlas.bib", "atlas.json", "index.html", "themes/quantization/index.html",
                 "taxonomy/quantization--ptq--weight-only/index.html", "years/index.html",
                 "venues/index.html", "tags/index.html", "implementations/index.html",
                 "search/search_index.json"):
        assert (evil_site / path).exists(), path
    assert "A Good Paper" in (evil_site / "papers" / "evil" / "index.html").read_text()  # related link
