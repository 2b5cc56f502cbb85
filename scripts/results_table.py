"""Print results/*.json as Markdown tables (one row per run), for the README and release notes.

    .venv/bin/python scripts/results_table.py [METHOD ...] [--model causal|encoder]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from catalog.site_data import load_results  # noqa: E402

SKIP = {"calib_samples", "seed"}


def options_text(options: dict, defaults: dict) -> str:
    changed = {k: v for k, v in options.items() if defaults.get(k) != v and k not in SKIP}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("methods", nargs="*")
    p.add_argument("--model", choices=["causal", "encoder"])
    args = p.parse_args()
    from reference_impls.common import registry

    results = load_results(Path("results"))
    for name in args.methods or sorted(results):
        if name not in results:
            sys.exit(f"no results for '{name}'")
        try:
            defaults = registry.get(name).defaults()
        except (KeyError, ValueError):
            defaults = {}
        rows = [r for r in results[name] if not args.model or r["model"] == args.model]
        print(f"\n### {name}\n")
        print("| model | options | metric | full precision | bits/weight | compress s | load |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            m = r["metrics"]
            if "perplexity" in m:
                metric, fp = f"ppl {m['perplexity']:.3f}", f"{m['perplexity_fp']:.3f}"
            else:
                metric, fp = f"cos {m['cosine']:.4f} / top-10 {m['retrieval_agreement']:.3f}", "1 / 1"
            extra = [f"{k} {m[k]:.3g}" for k in ("sparsity", "outlier_fraction", "latency_speedup") if isinstance(m.get(k), float)]
            if extra:
                metric += " (" + ", ".join(extra) + ")"
            print(f"| {r['model']} | {options_text(r['options'], defaults)} | {metric} | {fp} | "
                  f"{r['bits_per_weight']:.3f} | {r['time_s']:.1f} | {r['env'].get('load_avg_1m', '?')} |")


if __name__ == "__main__":
    main()
