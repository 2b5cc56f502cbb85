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
    linked = {(r.impl.module) for r in records.values() if r.runnable}
    assert linked <= {m.module for m in methods}, linked - {m.module for m in methods}
    by_name = {m.name: m.module for m in methods}
    for r in records.values():
        if r.impl is None:
            continue
        if r.impl.method:  # a named method is registered by the linked module
            assert by_name.get(r.impl.method) == r.impl.module, (r.id, r.impl.method, r.impl.module)
        unknown = [n for n in r.impl.covers if n not in by_name]
        assert not unknown, (r.id, unknown)
