"""What the site needs besides the records: similar papers (cached), implementations, results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from catalog.schema import Record
from catalog.site import SiteData

log = logging.getLogger("atlas.site")
SIMILAR_K = 5


def records_hash(records: list[Record]) -> str:
    blob = json.dumps([r.model_dump(mode="json") for r in sorted(records, key=lambda r: r.id)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def similar_papers(records: list[Record], cache_dir: Path) -> dict[str, list[str]]:
    """id -> ids of the most similar records, from catalog.search, cached by content hash."""
    cache = cache_dir / f"similar-{records_hash(records)}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache is recomputed
    try:
        from catalog.search import Searcher
    except ImportError:
        log.warning("catalog.search unavailable: pages show no similar papers")
        return {}
    searcher = Searcher(records, cache_dir=cache_dir, progress=False)
    result = {r.id: [hit.record.id for hit in searcher.similar(r.id, top_k=SIMILAR_K)] for r in records}
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("similar-*.json"):
        old.unlink(missing_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cache)
    return result


def load_results(results_dir: Path) -> dict[str, list[dict]]:
    """results/*.json -> method name -> run records (a file holds one record or a list of them)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("skipping unreadable results file %s", path)
            continue
        rows = data if isinstance(data, list) else data.get("runs", [data]) if isinstance(data, dict) else []
        for row in rows:
            if isinstance(row, dict) and "method" in row and "metrics" in row:
                out.setdefault(row["method"], []).append(row)
    return out


def implementations(records: list[Record]) -> dict[str, dict]:
    """impl module -> {"name": registered method name}, read from the module source.

    Reading `@register("name", ...)` from the file avoids importing torch and every method just
    to print a command line on a page.
    """
    import ast
    import importlib.util
    import re

    found: dict[str, dict] = {}
    for module in sorted({r.impl.module for r in records if r.impl}):
        try:
            spec = importlib.util.find_spec(module)
            source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
        except (ImportError, OSError, ValueError):
            continue
        names = re.findall(r'@register\(\s*"([^"]+)"', source)
        if names:
            try:
                doc = ast.get_docstring(ast.parse(source)) or ""
            except SyntaxError:
                doc = ""
            found[module] = {"name": names[0], "names": names, "doc": doc}
    return found


def site_data(records: list[Record], root: Path) -> SiteData:
    cache_dir = Path(os.environ.get("ATLAS_CACHE", root / ".atlas"))
    similar = {} if os.environ.get("ATLAS_SITE_NO_SIMILAR") else similar_papers(records, cache_dir)
    return SiteData(records=records, similar=similar, impls=implementations(records), results=load_results(root / "results"))
