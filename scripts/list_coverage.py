"""How much of a curated paper list the catalog covers, per list and per section (issue 15 §2).

A list is one or more Markdown files: a path on disk, `GITDIR:PATH` (read from a mirrored git
repository with `git show HEAD:PATH`, nothing written), a bare git directory (its README.md), or one of
the known lists below, found in the mirror folder (`--mirror`, default /work/.mirror, where the
`fetch` tool puts `owner+name/repo`).

Parsing: every heading (`#`..`######`) opens a section; an entry is a list item (`- ...`, with its
indented continuation lines) or a table row. An entry counts as a paper when it carries an arXiv id
or a link to a host other than code hosts and badges (so tool lists that only link GitHub are left
out). Its arXiv id comes from arxiv.org (abs/pdf/html), papers.cool/arxiv or huggingface.co/papers
links; its title from the link text (tables) or the item's first line (lists).

Matching: a paper is in the catalog when its arXiv id equals a record's `arxiv`, or its normalised
title (catalog.validate.normalize_title) equals a record's. A paper listed twice in a section counts
once there; the list total counts each paper once across sections.

    python scripts/list_coverage.py                       # the four known lists
    python scripts/list_coverage.py huangowen --missing quantization
    python scripts/list_coverage.py notes/list.md /work/.mirror/a+b/repo:docs/x.md --json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from catalog.validate import normalize_title  # noqa: E402

KNOWN = {
    "huangowen": ("HuangOwen+Awesome-LLM-Compression", ["README.md"]),
    "horseee": ("horseee+Awesome-Efficient-LLM", [
        "pruning.md", "knowledge_distillation.md", "quantization.md", "inference_acceleration.md",
        "efficient_moe.md", "efficient_architecture_llm.md", "kv_cache_compression.md",
        "text_compression.md", "low_rank_decomposition.md", "hardware.md", "tuning.md",
        "efficient_training.md", "survey.md"]),
    "pprp-quant": ("pprp+Awesome-LLM-Quantization", ["README.md"]),
    "pprp-prune": ("pprp+Awesome-LLM-Prune", ["README.md"]),
}

HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
ITEM = re.compile(r"^ ?[-*+]\s+\S")
ARXIV = re.compile(r"(?:arxiv\.org/(?:abs|pdf|html)/|papers\.cool/arxiv/|huggingface\.co/papers/)"
                   r"(\d{4}\.\d{4,5})", re.I)
IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|<img[^>]*>", re.I)
LINK = re.compile(r"\[\[?([^\[\]]*)\]\]?\(\s*([^)\s]*)[^)]*\)")
URL = re.compile(r"https?://[^\s)\]>|\"']+")
BREAK = re.compile(r"<br\s*/?>|\|", re.I)
NON_PAPER_HOSTS = ("github.com", "githubusercontent.com", "github.io", "img.shields.io", "shields.io",
                   "rawgit.com", "star-history.com", "contrib.rocks", "awesome.re", "huggingface.co/",
                   "medium.com", "twitter.com", "x.com", "youtube.com", "zhihu.com", "modelscope.cn",
                   "pypi.org", "npmjs.com")
GENERIC = {"paper", "code", "github", "pdf", "arxiv", "project", "blog", "website", "page", "demo", "model",
           "models", "dataset", "data", "huggingface", "openreview", "slides", "video", "link", "official",
           "homepage", "project page", "github page", "poster", "talk", "repo"}

LINK_WORDS = {"paper", "code", "github", "pdf", "project", "official"}


@dataclass
class Entry:
    title: str
    arxiv: str | None

    @property
    def key(self) -> str:
        return self.arxiv or normalize_title(self.title)


@dataclass
class Section:
    name: str
    entries: list[Entry] = field(default_factory=list)


def _host_is_paper(url: str) -> bool:
    url = url.lower()
    if ARXIV.search(url):
        return True
    host = re.sub(r"^https?://(www\.)?", "", url)
    return url.startswith("http") and not any(host.startswith(h) or f".{h}" in host.split("/")[0]
                                              for h in NON_PAPER_HOSTS)


def _generic(text: str) -> bool:
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return (not words or " ".join(words) in GENERIC or words[0] in LINK_WORDS and len(words) <= 2
            or "http" in text or re.match(r"^\s*[\w.-]+\.(org|com|cc|net)/", text) is not None)


def _clean(text: str) -> str:
    text = re.sub(r"<[^>]+>|\*\*|__|`", " ", text)
    return re.sub(r"\s+", " ", text).strip(" -:|\u200b")


def parse_entry(lines: list[str], *, table: bool) -> Entry | None:
    """The paper an entry names, or None when it links no paper (a tool, a table header, a badge row)."""
    text = IMAGE.sub("", "\n".join(lines))
    links = [(t, u) for t, u in LINK.findall(text) if t.strip() or u]
    urls = [u for _, u in links] + URL.findall(LINK.sub(" ", text))
    ids = ARXIV.findall(text)
    if not ids and not any(_host_is_paper(u) for u in urls):
        return None
    paper_links = [_clean(t) for t, u in links if t.strip() and not _generic(t) and _host_is_paper(u)]
    any_links = [_clean(t) for t, u in links if t.strip() and not _generic(t)]
    first = re.sub(r"^ ?[-*+]\s+", "", lines[0])
    plain = [_clean(s) for s in BREAK.split(LINK.sub("\n", first).split("\n")[0])]
    least = 3 if table else 1
    plain = [s for s in plain if len(s.split()) >= least and not URL.search(s) and not _generic(s)]
    order = (paper_links, any_links, plain) if table else (plain, paper_links, any_links)
    title = next((c[0] for c in order if c), "")
    if not title and not ids:
        return None
    return Entry(title=title, arxiv=ids[0] if ids else None)


def parse_markdown(text: str, *, default_section: str = "(top)") -> list[Section]:
    """Sections in file order, each with its paper entries (sections without papers dropped)."""
    sections = [Section(default_section)]
    current: list[str] | None = None
    table = False

    def close() -> None:
        nonlocal current
        if current:
            entry = parse_entry(current, table=table)
            if entry is not None:
                sections[-1].entries.append(entry)
        current = None

    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            close()
            name = _clean(LINK.sub(r"\1", IMAGE.sub("", heading.group(2))))
            name = re.sub(r"^[^\w(]+", "", name).strip() or heading.group(2)
            sections.append(Section(name))
        elif line.lstrip().startswith("|"):
            close()
            current, table = [line], True
            close()
        elif ITEM.match(line):
            close()
            current, table = [line], False
        elif current is not None and (not line.strip() or line[:1] in (" ", "\t")):
            current.append(line)
        elif line.strip():
            close()
    close()
    return [s for s in sections if s.entries]


def _read(source: str) -> str:
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    gitdir, _, inner = source.partition(":") if ":" in source and not path.exists() else (source, "", "")
    inner = inner or "README.md"
    out = subprocess.run(["git", "--git-dir", gitdir, "show", f"HEAD:{inner}"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: cannot read {source}: {out.stderr.strip() or 'not a file or git dir'}")
    return out.stdout


def load_list(source: str, mirror: Path) -> tuple[str, list[Section]]:
    """(list name, sections): a known list name, a Markdown file, GITDIR:PATH or a bare git dir."""
    if source in KNOWN:
        repo, files = KNOWN[source]
        gitdir = mirror / repo / "repo"
        if not gitdir.exists():
            raise SystemExit(f"error: {source}: {gitdir} not found (mirror github:{repo.replace('+', '/')})")
        sources = [f"{gitdir}:{f}" for f in files]
    else:
        sources = [source]
    merged: dict[str, Section] = {}
    for src in sources:
        for section in parse_markdown(_read(src), default_section=Path(src.split(":")[-1]).stem):
            merged.setdefault(section.name, Section(section.name)).entries.extend(section.entries)
    return source, list(merged.values())


def load_catalog_keys(papers: Path) -> tuple[dict[str, str], dict[str, str]]:
    """arXiv id -> record id and normalised title -> record id, read straight from the YAML files
    (a record another tool left invalid still counts; an unreadable file is skipped)."""
    by_arxiv: dict[str, str] = {}
    by_title: dict[str, str] = {}
    for path in sorted(papers.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, OSError):
            continue
        rid = str(data.get("id") or path.stem)
        if data.get("arxiv"):
            by_arxiv[str(data["arxiv"]).strip()] = rid
        if data.get("title"):
            by_title[normalize_title(str(data["title"]))] = rid
    return by_arxiv, by_title


def match(entry: Entry, keys: tuple[dict[str, str], dict[str, str]]) -> str | None:
    by_arxiv, by_title = keys
    if entry.arxiv and entry.arxiv in by_arxiv:
        return by_arxiv[entry.arxiv]
    return by_title.get(normalize_title(entry.title)) if entry.title else None


def coverage(name: str, sections: list[Section], keys) -> dict:
    """{"list", "papers", "covered", "percent", "sections": [{"section", "papers", "covered",
    "percent", "missing": [{"arxiv", "title"}]}]}"""
    rows, seen_all = [], {}
    for section in sections:
        unique = {e.key: e for e in section.entries if e.key}
        covered = {k for k, e in unique.items() if match(e, keys)}
        seen_all.update(unique)
        rows.append({"section": section.name, "papers": len(unique), "covered": len(covered),
                     "percent": round(100 * len(covered) / len(unique), 1) if unique else 0.0,
                     "missing": [{"arxiv": e.arxiv, "title": e.title} for k, e in unique.items()
                                 if k not in covered]})
    total = sum(1 for e in seen_all.values() if match(e, keys))
    return {"list": name, "papers": len(seen_all), "covered": total,
            "percent": round(100 * total / len(seen_all), 1) if seen_all else 0.0, "sections": rows}


def render(report: dict) -> list[str]:
    width = max([len(r["section"]) for r in report["sections"]] + [len("all sections")])
    width = min(width, 60)
    out = [f"## {report['list']}", f"{'section':<{width}}  {'papers':>6}  {'in catalog':>10}  {'%':>6}"]
    for row in report["sections"]:
        out.append(f"{row['section'][:width]:<{width}}  {row['papers']:>6}  {row['covered']:>10}  "
                   f"{row['percent']:>6.1f}")
    out.append(f"{'all sections':<{width}}  {report['papers']:>6}  {report['covered']:>10}  "
               f"{report['percent']:>6.1f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", help=f"known list ({', '.join(KNOWN)}), file, GITDIR:PATH "
                        "or git dir; default: every known list")
    parser.add_argument("--papers", type=Path, default=ROOT / "papers", help="catalog directory")
    parser.add_argument("--mirror", type=Path, default=Path("/work/.mirror"), help="where fetch mirrors")
    parser.add_argument("--missing", metavar="SECTION",
                        help="list the papers not in the catalog for sections whose name contains this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    keys = load_catalog_keys(args.papers)
    reports = [coverage(*load_list(src, args.mirror), keys) for src in args.sources or list(KNOWN)]
    wanted = args.missing.lower() if args.missing else None
    if args.json:
        for report in reports:
            for row in report["sections"]:
                if wanted is None or wanted not in row["section"].lower():
                    row.pop("missing")
        print(json.dumps(reports, indent=1, ensure_ascii=False))
        return 0
    for report in reports:
        print("\n".join(render(report)), end="\n\n")
        for row in report["sections"]:
            if wanted is not None and wanted in row["section"].lower():
                print(f"missing from {report['list']} / {row['section']} ({len(row['missing'])}):")
                for item in row["missing"]:
                    print(f"  {item['arxiv'] or '-':<11} {item['title']}")
                print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
