"""Hostile records (issue 22): a record is untrusted input, so no text of it may become live HTML.

One site is built from records that carry script, event handlers, `javascript:`/`data:` links,
Markdown, attribute lists, fences and entities in every free-text field; every built file, the
search index and the downloads are scanned. Links that fail the strict URL rules are refused by
the schema, and the page code escapes them even for a record that skipped validation.
"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import bibtexparser
import markdown
import pytest

from catalog.load import load_catalog
from catalog.schema import Record
from catalog.site import SiteData, build_site, paper_page
from catalog.urls import UnsafeUrl, check_url
from tests.catalog_fixtures import record_text, write_catalog

# Every payload calls alert(): a live one would leave "alert" in a script, a handler or a URL.
PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "[x](javascript:alert(3))",
    "[d](data:text/html,<script>alert(4)</script>)",
    "{onclick=alert(5)}",
    '{: onclick="alert(6)" }',
    '<a href="javascript:alert(7)">x</a>',
    "<javascript:alert(8)>",
    "&lt;script&gt;alert(9)&lt;/script&gt;",
    "``` [x](javascript:alert(10))",
    "~~~html <script>alert(11)</script>",
    '??? note "<svg onload=alert(12)>"',
    ":material-alert: {{ config.site_name }} {% raw %}",
    "<!-- --><script>alert(13)</script>",
    "]]><svg/onload=alert(14)>",
    "`<iframe src=javascript:alert(15)>`",
    "*[HTML]: <b onmouseover=alert(16)>",
    "[x]: javascript:alert(17)",
]
MULTILINE = "first line\n\n```\n[x](javascript:alert(18))\n```\n\n    <script>alert(19)</script>\n# heading"


def yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def hostile_records() -> dict[str, str]:
    records = {}
    for i, payload in enumerate(PAYLOADS):
        rid = f"hostile-{i}"
        arxiv = f"2301.{i + 10000:05d}"
        text = record_text(rid, arxiv=arxiv, year=2023, title="T" + str(i) + " " + payload)
        text = text.replace(f'title: "T{i} {payload}"', f"title: {yaml_str(f'T{i} {payload}')}")
        text = text.replace("authors: [Ada Lovelace, Alan Turing]",
                            f"authors: [{yaml_str('Ada ' + payload)}, Alan Turing]")
        text = text.replace("venue: ICLR 2023", f"venue: {yaml_str('ICLR 2023 ' + payload)}")
        text = text.replace("Only weights are quantized", payload.replace("\\", "") + " Only weights")
        text = text.replace("code: null", f"code: https://github.com/x/y?q={i}&r=%22%3Cb%3E")
        records[rid] = text
    multi = record_text("hostile-multi", arxiv="2301.20000", year=2023, title="A multi-line summary")
    records["hostile-multi"] = multi.replace(
        "  limitations: >-\n    Only weights are quantized",
        "  limitations: |-\n" + "".join(f"    {line}\n" for line in MULTILINE.splitlines()) + "    Only")
    report = record_text("hostile-report", arxiv="2301.20001", year=2023, title="A benchmark report",
                         themes="[benchmarks]", taxonomy="benchmarks/evaluation")
    records["hostile-report"] = report + f"impl:\n  none: {yaml_str('none ' + PAYLOADS[1])}\n"
    return records


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    papers = write_catalog(base / "papers", hostile_records())
    catalog = load_catalog(papers, coverage=False)
    assert not catalog.errors, catalog.errors[:3]
    mp = pytest.MonkeyPatch()
    mp.setenv("ATLAS_SITE_NO_SIMILAR", "1")
    mp.setenv("ATLAS_CACHE", str(base / "cache"))
    # no record links a module: the registry (a torch import) has nothing to add to these pages
    mp.setattr("catalog.site_data.cached_registry_index", lambda cache_dir: {})
    try:
        build_site(papers, base / "site")
    finally:
        mp.undo()
    return base / "site"


class Scanner(HTMLParser):
    """Collects what could run: script text, event-handler attributes, dangerous URL schemes."""

    URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "background"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}={value!r}>")
            squeezed = re.sub(r"[\x00-\x20]", "", value).lower()
            if name in self.URL_ATTRS and squeezed.startswith(("javascript:", "data:", "vbscript:")):
                self.problems.append(f"<{tag} {name}={value[:60]!r}>")
            if "alert(" in value:
                self.problems.append(f"<{tag} {name}={value[:60]!r}>")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and "alert(" in data:
            self.problems.append(f"script: {data[:80]!r}")


def live_html(text: str) -> list[str]:
    scanner = Scanner()
    scanner.feed(text)
    scanner.close()
    return scanner.problems


def test_scanner_sees_live_payloads():
    """The oracle: the scanner flags each kind of live markup it is meant to find."""
    for live in ('<script>alert(1)</script>', '<img src=x onerror="alert(2)">', '<a href=" javascript:x">',
                 '<a href="data:text/html,x">', '<p onclick="x">', '<svg><a xlink:href="javascript:x">'):
        assert live_html(live), live
    assert not live_html('<p>&lt;script&gt;alert(1)&lt;/script&gt; <a href="https://x.org/?a=1&amp;b">')


def test_built_pages_have_nothing_live(hostile_site):
    pages = sorted(hostile_site.rglob("*.html"))
    assert len(pages) > 20
    problems = {str(p.relative_to(hostile_site)): live_html(p.read_text()) for p in pages}
    assert not {k: v for k, v in problems.items() if v}


def test_record_text_renders_literally(hostile_site):
    for i, payload in enumerate(PAYLOADS):
        page = (hostile_site / "papers" / f"hostile-{i}" / "index.html").read_text()
        article = page.split("<article", 1)[1].split("</article>", 1)[0]
        text = html.unescape(re.sub(r"<[^>]+>", "", article))
        assert f"T{i} {payload}" in text, payload  # title, as written
        assert f"ICLR 2023 {payload}" in text  # venue badge
        assert "Ada " + payload in text  # authors
    multi = (hostile_site / "papers" / "hostile-multi" / "index.html").read_text()
    body = html.unescape(re.sub(r"<[^>]+>", "", multi.split("<h2 id=\"limitations\"", 1)[1]))
    assert " ".join(MULTILINE.split()) in body  # one paragraph: no fence, heading or code block


def test_search_index_holds_no_markup_from_records(hostile_site):
    """Material renders search results from this file as HTML: record text must stay escaped in it."""
    index = json.loads((hostile_site / "search" / "search_index.json").read_text())
    for doc in index["docs"]:
        for key in ("title", "text"):
            assert not live_html(doc.get(key, "")), (doc["location"], doc[key][:200])


def test_downloads_keep_hostile_text_inside_fields(hostile_site):
    bib = (hostile_site / "atlas.bib").read_text()
    library = bibtexparser.parse_string(bib)
    assert not library.failed_blocks
    assert len(library.entries) == len(hostile_records())
    titles = [e.fields_dict["title"].value for e in library.entries]
    assert any("alert(10)" in t for t in titles)  # the fence title stays in its field
    data = json.loads((hostile_site / "atlas.json").read_text())
    assert {r["title"] for r in data} >= {f"T{i} {p}" for i, p in enumerate(PAYLOADS)}


def test_cite_block_cannot_be_closed_by_record_text(hostile_site):
    page = (hostile_site / "papers" / "hostile-9" / "index.html").read_text()
    cite = page.split('id="cite"', 1)[1]
    pre = cite.split("<pre", 1)[1].split("</pre>", 1)[0]
    assert "alert(10)" in html.unescape(re.sub(r"<[^>]+>", "", pre))  # inside the code block
    after = cite.split("</pre>", 1)[1].split("</article>", 1)[0]
    assert "alert" not in after


BAD_URLS = [
    "https://example.com/)[x](javascript:alert(1)",
    "https://example.com/#){onclick=alert(document.domain)}",
    "javascript:alert(1)",
    "JAVASCRIPT:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://example.com/paper.pdf",
    "//example.com/x",
    "https://example.com/a b",
    "https://example.com/\nhttps://x.org",
    "https://exa\tmple.com/",
    'https://example.com/"onmouseover="alert(1)',
    "https://example.com/'x",
    "https://example.com/<script>",
    "https://example.com/`x`",
    "https://example.com/{: .x}",
    "https://example.com/[x]",
    "https://example.com\\@evil.org/",
    "https://arxiv.org@evil.org/",
    "https://user:pw@example.com/",
    "https:///nohost",
    "https://localhost/",
    "https://-bad-.com/",
    "https://example.com:99999/",
    "https://example.com:0/",
    "https://еxample.com/",  # Cyrillic е
    "https://example.com/\u202egnp.exe",
    "http://" + "a" * 2000 + ".com/",
    "",
    "   ",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_unsafe_urls_are_refused(url):
    with pytest.raises(UnsafeUrl):
        check_url(url)


@pytest.mark.parametrize("url", ["https://arxiv.org/abs/2210.17323", "http://github.com/IST-DASLab/gptq",
                                 "https://example.com:8080/a/b?x=1&y=%22q%22#sec-2.1",
                                 "https://openreview.net/forum?id=ABC_d-1", "https://a.b.co.uk/~user/p.pdf"])
def test_plain_urls_pass(url):
    assert check_url(url) == url


@pytest.mark.parametrize("field", ["url", "code"])
def test_record_with_unsafe_link_names_the_field_and_line(tmp_path, field):
    text = record_text("evil")
    line = "url: https://arxiv.org/abs/2210.17323" if field == "url" else "code: null"
    text = text.replace(line, f"{field}: 'https://example.com/)[x](javascript:alert(1)'")
    write_catalog(tmp_path, {"evil": text})
    catalog = load_catalog(tmp_path, coverage=False)
    assert not catalog.records
    [error] = catalog.errors
    assert error.field == field and error.line == (7 if field == "url" else 8)
    assert "')'" in error.message


@pytest.mark.parametrize("title,message", [
    ("A title\n```\n[x](javascript:alert(1))", "line break"),
    ("A title\rcarriage", "line break"),
    ("A title\u2028separator", "line break"),
    ("Right\u202eto left", "control character"),
    ("Bell\x07", "control character"),
    ("x" * 301, "at most 300"),
])
def test_titles_are_one_bounded_line(tmp_path, title, message):
    write_catalog(tmp_path, {"t": record_text("t").replace('title: "A test paper about t"',
                                                           f"title: {yaml_str(title)}")})
    [error] = load_catalog(tmp_path, coverage=False).errors
    assert error.field == "title" and message in error.message


def test_authors_and_venue_are_one_line(tmp_path):
    text = record_text("t").replace("authors: [Ada Lovelace, Alan Turing]", 'authors: ["Ada\\nLovelace"]')
    text = text.replace("venue: ICLR 2023", 'venue: "ICLR\\n2023"')
    write_catalog(tmp_path, {"t": text})
    fields = {e.field for e in load_catalog(tmp_path, coverage=False).errors}
    assert fields == {"authors[0]", "venue"}


MD_EXTENSIONS = ["attr_list", "md_in_html", "admonition", "pymdownx.details", "tables", "toc",
                 "pymdownx.superfences"]


@pytest.mark.parametrize("url", BAD_URLS[:6])
def test_page_escapes_links_of_an_unvalidated_record(tmp_path, url):
    """Defence in depth: a record built without validation still yields no live link."""
    write_catalog(tmp_path, {"t": record_text("t")})
    good = load_catalog(tmp_path, coverage=False).records[0]
    evil = Record.model_construct(**{**dict(good), "url": url, "code": url, "arxiv": None})
    page = paper_page(evil, SiteData(records=[evil]), "@misc{k, title={x}}")
    rendered = markdown.markdown(page.split("---\n", 2)[2], extensions=MD_EXTENSIONS)
    assert not [p for p in live_html(rendered) if "javascript" in p or "on" in p.split()[1][:2]], rendered
