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


def timed_build(papers: Path, cache: Path, *, similar: bool = True) -> float:
    from catalog.site import build_site

    os.environ["ATLAS_CACHE"] = str(cache)
    if similar:
        os.environ.pop("ATLAS_SITE_NO_SIMILAR", None)
    else:
        os.environ["ATLAS_SITE_NO_SIMILAR"] = "1"
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            build_site(papers, Path(out) / "site")
            return time.perf_counter() - start
    finally:
        os.environ.pop("ATLAS_SITE_NO_SIMILAR", None)


def edit_one(papers: Path) -> None:
    """Change one record's summary, as an author fixing a sentence would."""
    path = sorted(papers.glob("*.yaml"))[0]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["summary"]["limitations"] += " Edited for the incremental benchmark."
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def bench_catalog(papers: Path, cache: Path, edit_copy: Path) -> dict:
    """Cold (empty cache: embed every record, similar papers, pages), warm (nothing changed),
    pages only (no similar-papers step at all), and after editing one record."""
    row = {"records": len(load_records(papers))}
    row["cold_build_s"] = round(timed_build(papers, cache), 2)
    row["warm_build_s"] = round(timed_build(papers, cache), 2)
    row["pages_only_build_s"] = round(timed_build(papers, cache, similar=False), 2)
    shutil.copytree(papers, edit_copy)
    edit_one(edit_copy)
    row["one_record_edited_build_s"] = round(timed_build(edit_copy, cache), 2)
    shutil.rmtree(edit_copy)
    return row


def run_bench(papers: Path) -> dict:
    import torch

    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "python": platform.python_version(), "load_at_start": os.getloadavg()[0]},
                     "targets_s": {"catalog": 20, "synthetic_2000": 90}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["catalog"] = bench_catalog(papers, tmp / "cache-real", tmp / "edited-real")
        print(json.dumps(results["catalog"]), flush=True)
        synthetic = synthetic_catalog(papers, tmp / "synthetic", 2000)
        results["synthetic_2000"] = bench_catalog(synthetic, tmp / "cache-syn", tmp / "edited-syn")
        shutil.rmtree(synthetic)
    os.environ.pop("ATLAS_CACHE", None)
    results["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path("results").mkdir(exist_ok=True)
    Path("results/site.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results
