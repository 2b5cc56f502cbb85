"""How much of the catalog links running code, per theme.

Each record falls in one class: `own` (its method, fidelity exact or simplified), `family` (the closest
method of its family, with a note on how the paper differs), `covers` (a survey, benchmark or model
report linking the methods it covers), `none` (an explicit reason why nothing runs) or `missing`.
A record counts once under each of its themes.
"""

from __future__ import annotations

from catalog.schema import Record
from catalog.validate import METHOD_THEMES
from catalog.vocabulary import vocabulary

CLASSES = ("own", "family", "covers", "none", "missing")


def link_class(record: Record) -> str:
    return record.impl.kind if record.impl is not None else "missing"


def coverage(records: list[Record]) -> dict[str, dict[str, int]]:
    """theme -> {class: count, "records": n}, themes in vocabulary order, then "all"."""
    table: dict[str, dict[str, int]] = {}
    for theme in vocabulary().themes:
        members = [r for r in records if theme in r.themes]
        if members:
            row = {c: sum(link_class(r) == c for r in members) for c in CLASSES}
            table[theme] = {"records": len(members), **row}
    table["all"] = {"records": len(records), **{c: sum(link_class(r) == c for r in records) for c in CLASSES}}
    return table


def linked_share(row: dict[str, int]) -> float:
    """Fraction of a row's records that link running code (own or family)."""
    return (row["own"] + row["family"]) / row["records"] if row["records"] else 0.0


def is_method_theme(theme: str) -> bool:
    return theme in METHOD_THEMES


def coverage_markdown(records: list[Record], theme_url: str = "themes/{}/") -> list[str]:
    """The home page's coverage table: a compact HTML table (Markdown tables are too wide for it)."""
    from html import escape

    rows = coverage(records)
    head = "".join(f"<th>{c}</th>" for c in ("theme", "papers", *CLASSES, "linked"))
    body = []
    for theme, row in rows.items():
        name = "<b>all</b>" if theme == "all" else \
            f'<a href="{escape(theme_url.format(theme))}">{escape(theme)}</a>'
        cells = "".join(f"<td>{row[c]}</td>" for c in ("records", *CLASSES))
        body.append(f"<tr><td>{name}</td>{cells}<td>{linked_share(row):.0%}</td></tr>")
    return ["## Running code per theme", "",
            "Every paper of a method theme links a tested reference implementation: **own** (its method), "
            "**family** (the family's closest method, with a note on how the paper differs); surveys, "
            "benchmarks and model reports link the methods they **cover** or say why **none** runs. "
            "**linked**: own or family.", "",
            f'<table class="atlas-coverage"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>', ""]
