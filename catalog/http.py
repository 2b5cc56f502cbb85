"""HTTP for `atlas add` / `atlas enrich`: timeouts, bounded retries with backoff, an on-disk cache.

`CachedSession` is a `requests.Session`, so the `arxiv` and `pyalex` libraries use it unchanged
(they parse; this module only fetches). Every request gets a (connect, read) timeout. A 429 or 5xx
answer is retried at most `retries` times, waiting
`backoff · 2^attempt` seconds (or the server's `Retry-After`, capped at `MAX_WAIT`); a refused
connection or a timeout is retried once (offline, every try fails the same way). A GET answered
200 or 404 is kept under `<cache>/http/<sha256 of the URL>.json` for `max_age` seconds, so the second
`atlas enrich` of a session (the one with `--yes`) reads what the first one showed without asking
again; `--no-cache` neither reads nor writes the cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import requests
from requests.structures import CaseInsensitiveDict

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CACHED_STATUS = frozenset({200, 404})  # an answer, found or not; errors are asked again
TIMEOUT = (10.0, 30.0)  # seconds: connect, read
CONNECT_RETRIES = 1  # a refused connection or a timeout is retried once
MAX_WAIT = 60.0  # seconds: the longest Retry-After honoured
CACHE_MAX_AGE = 24 * 3600  # seconds: metadata older than a day is asked for again
USER_AGENT = "llm-compression-atlas/0.1 (atlas add/enrich; metadata for a research catalog)"


def cache_root() -> Path:
    """`$ATLAS_HTTP_CACHE`, else `$ATLAS_CACHE/http` (default `.atlas/http`, next to the search index)."""
    if os.environ.get("ATLAS_HTTP_CACHE"):
        return Path(os.environ["ATLAS_HTTP_CACHE"])
    return Path(os.environ.get("ATLAS_CACHE", ".atlas")) / "http"


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class CachedSession(requests.Session):
    """A requests session that retries, times out and caches GET answers on disk."""

    def __init__(self, cache_dir: Path | None = None, *, use_cache: bool = True, retries: int = 3,
                 backoff: float = 1.0, timeout: tuple[float, float] = TIMEOUT,
                 max_age: float = CACHE_MAX_AGE, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.use_cache = use_cache
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.max_age = max_age
        self.sleep = sleep
        self.network_calls = 0  # requests that went out (tests and the summary line read it)
        self.headers["User-Agent"] = USER_AGENT

    # -- cache --
    def _cache_path(self, url: str) -> Path:
        return self.cache_dir / f"{cache_key(url)}.json"

    def _cached(self, url: str) -> requests.Response | None:
        path = self._cache_path(url)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("url") != url or time.time() - float(entry["time"]) > self.max_age:
                return None
            content = base64.b64decode(entry["body"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing, stale or damaged: ask the server
        response = requests.Response()
        response.status_code = int(entry.get("status", 200))
        response._content = content
        response.headers = CaseInsensitiveDict(entry.get("headers") or {})
        response.url = url
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.from_cache = True
        return response

    def _store(self, url: str, response: requests.Response) -> None:
        from catalog.files import OutputError, write_text_atomic

        entry = {"url": url, "time": time.time(), "status": response.status_code,
                 "headers": {k: v for k, v in response.headers.items() if k.lower() == "content-type"},
                 "body": base64.b64encode(response.content).decode("ascii")}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self._cache_path(url), json.dumps(entry), "--cache")
        except (OSError, OutputError):
            pass  # the cache is a convenience: a read-only disk must not fail the command

    # -- requests --
    def _wait(self, attempt: int, response: requests.Response | None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), MAX_WAIT)
        return min(self.backoff * 2 ** attempt, MAX_WAIT)

    def request(self, method, url, *args, **kwargs):  # noqa: D401 - the requests.Session signature
        kwargs.setdefault("timeout", self.timeout)
        cacheable = method.upper() == "GET" and self.use_cache
        full_url = self._full_url(method, url, kwargs)
        if cacheable:
            hit = self._cached(full_url)
            if hit is not None:
                return hit
        response = self._request_with_retries(method, url, *args, **kwargs)
        if cacheable and response.status_code in CACHED_STATUS:
            self._store(full_url, response)
        return response

    def _full_url(self, method: str, url: str, kwargs: dict) -> str:
        """The URL with its query string, as it is sent (the cache key)."""
        params = kwargs.get("params")
        if not params:
            return url
        return requests.Request(method, url, params=params).prepare().url

    def _request_with_retries(self, method, url, *args, **kwargs) -> requests.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                self.network_calls += 1
                response = super().request(method, url, *args, **kwargs)
            except (requests.ConnectionError, requests.Timeout):
                # no route / DNS failure is what "offline" looks like: one retry, then say so
                if attempt >= min(self.retries, CONNECT_RETRIES):
                    raise
                self.sleep(self._wait(attempt, None))
                continue
            if response.status_code in RETRY_STATUS and not last:
                self.sleep(self._wait(attempt, response))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
