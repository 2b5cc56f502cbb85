"""Catalog records and the implementation registry agree: every link runs, every method is linked."""

from pathlib import Path

from catalog.load import load_records
from reference_impls.common.registry import all_methods

PAPERS = Path(__file__).resolve().parents[1] / "papers"


def test_registry_and_records_agree():
    records = {r.id: r for r in load_records(PAPERS)}
    methods = all_methods()
    for m in methods:
        for rid in m.papers:
            assert rid in records, f"{m.name} implements unknown record {rid}"
            impl = records[rid].impl
            assert impl is not None, f"papers/{rid}.yaml has no impl for {m.name}"
            assert impl.module == m.module and impl.fidelity == m.fidelity, (rid, impl, m.module, m.fidelity)
    linked = {(r.impl.module) for r in records.values() if r.impl}
    assert linked <= {m.module for m in methods}, linked - {m.module for m in methods}
