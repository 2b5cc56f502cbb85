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


def _read_cache(path: Path, shape_ok) -> dict | None:
    """A cache file's content when it reads and has the expected shape; None (recompute) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: recomputed
    if not shape_ok(data):
        log.warning("cache file %s has the wrong shape; recomputing it", path)
        return None
    return data


def _similar_shape_ok(data) -> bool:
    return isinstance(data, dict) and all(
        isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in data.values())


def _impls_shape_ok(data) -> bool:
    return isinstance(data, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("doc"), str)
        and isinstance(entry.get("names"), list) for entry in data.values())


def records_hash(records: list[Record]) -> str:
    dumped = [r.model_dump(mode="json") for r in sorted(records, key=lambda r: r.id)]
    blob = json.dumps(dumped, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def similar_papers(records: list[Record], cache_dir: Path) -> dict[str, list[str]]:
    """id -> ids of the most similar records, from catalog.search, cached by content hash."""
    cache = cache_dir / f"similar-{records_hash(records)}.json"
    cached = _read_cache(cache, _similar_shape_ok)
    if cached is not None:
        return cached
    from catalog.search import Searcher  # local: loads the search stack only on a cache miss

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
        for row in rows if isinstance(rows, list) else []:
            # a run the pages can read: anything else (edited by hand, another format) is skipped
            if (isinstance(row, dict) and isinstance(row.get("method"), str)
                    and isinstance(row.get("metrics"), dict) and isinstance(row.get("options", {}), dict)):
                out.setdefault(row["method"], []).append(row)
    return out


def registry_index() -> dict[str, dict]:
    """impl module -> {"name", "names", "doc"}: the methods it registers and its docstring.

    Imports every method module through the registry (torch included: about two seconds cold).
    """
    import inspect
    import sys

    from reference_impls.common import registry

    index: dict[str, dict] = {}
    for method in registry.all_methods():
        doc = inspect.getdoc(sys.modules[method.module]) or ""
        entry = index.setdefault(method.module, {"name": method.name, "names": [], "doc": doc})
        entry["names"].append(method.name)
    if registry.DISCOVERY_ERRORS:
        log.warning("reference_impls modules that failed to import: %s", registry.DISCOVERY_ERRORS)
    return index


def sources_hash(directories: list[Path]) -> str:
    """Hash of the path and content of every `*.py` file under `directories`."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in sorted(Path(directory).rglob("*.py")):
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def impl_sources_hash() -> str:
    """`sources_hash` of reference_impls/, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("reference_impls")
    return sources_hash([Path(p) for p in (spec.submodule_search_locations or [])] if spec else [])


def cached_registry_index(cache_dir: Path) -> dict[str, dict]:
    """`registry_index()`, cached by the hash of the reference_impls sources.

    The site needs each method's name and docstring, not torch: a rebuild with unchanged sources
    imports nothing, and any edit under reference_impls/ changes the hash, so the cache cannot go stale.
    """
    cache = cache_dir / f"impls-{impl_sources_hash()}.json"
    cached = _read_cache(cache, _impls_shape_ok)
    if cached is not None:
        return cached
    from reference_impls.common import registry

    index = registry_index()
    if registry.DISCOVERY_ERRORS:
        return index  # an environment that cannot import every method is not cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("impls-*.json"):
        old.unlink(missing_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(cache)
    return index


def implementations(records: list[Record], cache_dir: Path | None = None) -> dict[str, dict]:
    """impl module -> {"name": registered method name, "names", "doc"} for the modules records link to.

    Names come from the registry (reference_impls.common.registry); with `cache_dir` its answer is
    cached by source hash (`cached_registry_index`).
    """
    index = registry_index() if cache_dir is None else cached_registry_index(cache_dir)
    linked = sorted({r.impl.module for r in records if r.runnable})
    return {module: index[module] for module in linked if module in index}


def method_families(cache_dir: Path) -> dict[str, str]:
    """Registered method name -> family (the folder under reference_impls/ of its module)."""
    index = cached_registry_index(cache_dir)
    return {name: module.split(".")[1] for module, info in index.items() for name in info.get("names", [])}


def site_data(records: list[Record], root: Path, papers: Path | None = None) -> SiteData:
    from catalog.evidence import load_evidence
    from catalog.results import load_runs
    from catalog.site_plots import cached_plots

    cache_dir = Path(os.environ.get("ATLAS_CACHE", root / ".atlas"))
    similar = {} if os.environ.get("ATLAS_SITE_NO_SIMILAR") else similar_papers(records, cache_dir)
    runs = load_runs(root / "results", method_families(cache_dir))
    plots = cached_plots(runs, {r.id for r in records}, cache_dir) if runs else []
    evidence, _ = load_evidence(papers or root / "papers")  # errors are validate's to report
    return SiteData(records=records, similar=similar, impls=implementations(records, cache_dir),
                    results=load_results(root / "results"), runs=runs, plots=plots,
                    evidence={k: v.model_dump(mode="json") for k, v in evidence.items()})
