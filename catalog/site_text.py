"""Escaping of record text for Markdown pages: whatever a record says renders as literal text."""

from __future__ import annotations

import html
import re

# Characters Python-Markdown treats as syntax and accepts backslash escapes for.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!])")


def md(text: str | None) -> str:
    """Literal text inside Markdown: HTML-escaped (no tags, no entities) and Markdown-escaped."""
    if text is None:
        return ""
    escaped = html.escape(str(text), quote=True).replace("|", "&#124;")
    # '&' from html.escape starts entities ('&lt;'), so escape Markdown only outside them.
    parts = re.split(r"(&[a-z]+;|&#x?[0-9a-f]+;)", escaped)
    return "".join(p if p.startswith("&") and p.endswith(";") else _MD_SPECIAL.sub(r"\\\1", p) for p in parts)


def attr(text: str) -> str:
    """Text for an HTML attribute value or a YAML front-matter string."""
    return html.escape(str(text), quote=True)


def front_matter(title: str, **extra) -> str:
    import json

    lines = ["---", f"title: {json.dumps(attr(title), ensure_ascii=False)}"]
    for key, value in extra.items():
        lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines + ["---", ""])


def leaf_slug(leaf: str) -> str:
    return leaf.replace("/", "--")
