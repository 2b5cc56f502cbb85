"""Site build benchmark: the real catalog and 2,000 synthetic records; incremental rebuild.

`atlas bench site` prints the timings and writes results/site.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from catalog.load import load_records


def synthetic_catalog(papers: Path, target: Path, n: int) -> Path:
    """n records made from the real ones: new ids, titles and arXiv ids; related links kept inside."""
    records = load_records(papers)
    target.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = records[i % len(records)].model_dump(mode="json")
        rid = f"synthetic-{i:05d}"
        base.update(id=rid, title=f"{base['title']} (synthetic variant {i})", impl=None,
                    arxiv=f"{str(base['year'])[2:]}{(i % 12) + 1:02d}.{10000 + i:05d}",
                    related=[f"synthetic-{(i + k) % n:05d}" for k in (1, 2)])
        base["url"] = f"https://arxiv.org/abs/{base['arxiv']}"
        (target / f"{rid}.yaml").write_text(yaml.safe_dump(base, sort_keys=False, allow_unicode=True))
    return target


def timed_build(papers: Path, cache: Path) -> float:
    from catalog.commands.site_cmds import build_site

    os.environ["ATLAS_CACHE"] = str(cache)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        build_site(papers, Path(out) / "site")
        return time.perf_counter() - start


def run_bench(papers: Path) -> dict:
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_real = len(load_records(papers))
        cold = timed_build(papers, tmp / "cache-real")
        warm = timed_build(papers, tmp / "cache-real")
        results["catalog"] = {"records": n_real, "cold_build_s": round(cold, 2), "warm_build_s": round(warm, 2)}
        synthetic = synthetic_catalog(papers, tmp / "synthetic", 2000)
        cold = timed_build(synthetic, tmp / "cache-syn")
        warm = timed_build(synthetic, tmp / "cache-syn")
        results["synthetic_2000"] = {"records": 2000, "cold_build_s": round(cold, 2), "warm_build_s": round(warm, 2)}
        shutil.rmtree(synthetic)
    os.environ.pop("ATLAS_CACHE", None)
    Path("results").mkdir(exist_ok=True)
    Path("results/site.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results
