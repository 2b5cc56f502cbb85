"""Escaping of record text for Markdown pages: whatever a record says renders as literal text."""

from __future__ import annotations

import html
import re

from catalog.urls import UnsafeUrl, check_url

# Characters Python-Markdown treats as syntax and accepts backslash escapes for.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!])")


# Syntax of the enabled extensions that backslashes cannot escape: fences (~~~), details (???),
# emoji shortcodes (:name:). Written as character references, which render as the character.
_ENTITY_SPECIAL = {"~": "&#126;", "?": "&#63;", ":": "&#58;"}


def md(text: str | None) -> str:
    """Literal text inside Markdown: HTML-escaped (no tags, no entities) and Markdown-escaped.

    Whitespace runs (line breaks included) become one space, so record text is always inline: it
    can neither start a block (a fence, a heading, a list, an indented code block) nor end one.
    """
    if text is None:
        return ""
    escaped = html.escape(" ".join(str(text).split()), quote=True).replace("|", "&#124;")
    # '&' from html.escape starts entities ('&lt;'), so escape Markdown only outside them.
    parts = re.split(r"(&[a-z]+;|&#x?[0-9a-f]+;)", escaped)
    return "".join(p if p.startswith("&") and p.endswith(";") else _escape_plain(p) for p in parts)


def _escape_plain(text: str) -> str:
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = re.sub(r"~|^\?|:(?=[\w+-]+:)", lambda m: _ENTITY_SPECIAL[m.group(0)[0]], text)
    return text


def button(label: str, url: str) -> str:
    """A link button as HTML, escaped for the attribute and the text: nothing in it is Markdown.

    The URL is checked again here (records are validated on load): a link that fails the rules of
    catalog.urls is shown as plain text, never as a live link.
    """
    try:
        url = check_url(url)
    except UnsafeUrl:
        return md(label)
    return f'<a class="md-button" href="{attr(url)}">{md(label)}</a>'


def code_block(text: str, language: str = "") -> list[str]:
    """A fenced block that its content cannot close: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, text, fence]


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
