"""Print results/*.json as Markdown tables (the site's tables), for the README and release notes.

    .venv/bin/python scripts/results_table.py [METHOD ...] [--model causal|encoder]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from catalog.site import results_table  # noqa: E402
from catalog.site_data import load_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("methods", nargs="*")
    p.add_argument("--model", choices=["causal", "encoder"])
    args = p.parse_args()
    results = load_results(Path("results"))
    for name in args.methods or sorted(results):
        if name not in results:
            sys.exit(f"no results for '{name}'")
        rows = [r for r in results[name] if not args.model or r["model"] == args.model]
        print(f"\n### {name}\n")
        print("\n".join(results_table(rows)))


if __name__ == "__main__":
    main()
