"""Strict validation of the links a record carries (`url`, `code`).

A record is untrusted input (it may arrive in a pull request) and its links end up in `href`
attributes of the site. Only plain http(s) URLs pass: parsed with `urllib.parse`, printable ASCII
without spaces, quotes, brackets, braces or backslashes (Markdown and attribute-list syntax), no
user-info part (`https://arxiv.org@evil.example/` reads as arxiv.org) and a host name with a dot.
Non-ASCII characters are written percent-encoded, as a browser's address bar copies them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_URL_CHARS = 2000
# Characters that are syntax in Markdown links, attribute lists, HTML or shells; a paper's or a
# repository's URL never needs them unencoded.
_FORBIDDEN = re.compile(r"""[<>"'`(){}\[\]|\\^]""")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")


class UnsafeUrl(ValueError):
    pass


def check_url(value: object) -> str:
    """The URL unchanged when it is a plain http(s) link; UnsafeUrl saying what is wrong otherwise."""
    if not isinstance(value, str):
        raise UnsafeUrl(f"a link is a string like https://arxiv.org/abs/2210.17323, "
                        f"got {type(value).__name__}")
    url = value.strip()
    if len(url) > MAX_URL_CHARS:
        raise UnsafeUrl(f"link is {len(url)} characters long, more than {MAX_URL_CHARS}")
    if not re.fullmatch(r"[!-~]+", url):
        raise UnsafeUrl("link contains spaces, control or non-ASCII characters (percent-encode them)")
    bad = _FORBIDDEN.search(url)
    if bad:
        raise UnsafeUrl(f"link contains '{bad.group(0)}', which is not allowed unencoded "
                        "(percent-encode it, e.g. %28 for '(')")
    try:
        parts = urlsplit(url)
        if parts.port == 0:  # reading .port raises ValueError for one that is not a number in range
            raise ValueError("port 0")
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeUrl(f"scheme '{parts.scheme or '(none)'}' is not allowed: links start with https:// "
                        "or http://")
    if "@" in parts.netloc:
        raise UnsafeUrl("user information before '@' is not allowed in a link")
    host = (parts.hostname or "").lower()
    if not _HOST.match(host):
        raise UnsafeUrl(f"'{host or parts.netloc}' is not a host name like arxiv.org")
    return url
