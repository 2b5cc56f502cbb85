"""Site commands: build the static site into build/site and serve it on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer

from catalog.cli_app import PapersOption, app, papers_dir
from catalog.commands.catalog_cmds import err, fail, invalid_exit
from catalog.load import CatalogInvalid
from catalog.site import MKDOCS_CONFIG, build_site


@app.command("build")
def build_cmd(
    site_dir: Path = typer.Option(Path("build/site"), "--site-dir", help="Output directory."),
    strict: bool = typer.Option(True, help="Fail on any mkdocs warning (broken links included)."),
    papers: Path | None = PapersOption,
) -> None:
    """Build the static site from the catalog into build/site.

    Example: atlas build && atlas serve --no-build
    """
    import time

    from mkdocs.exceptions import Abort, ConfigurationError

    if not MKDOCS_CONFIG.exists():
        raise fail("mkdocs.yml not found: run atlas build from the repository root")
    start = time.perf_counter()
    try:
        build_site(papers_dir(papers), site_dir, strict=strict)
    except CatalogInvalid as exc:
        raise invalid_exit(exc) from None
    except (Abort, ConfigurationError) as exc:
        raise fail(f"site build failed: {exc}") from None
    err.print(f"built {site_dir} in {time.perf_counter() - start:.1f} s", highlight=False)


@app.command("serve")
def serve_cmd(
    port: int = typer.Option(8000, help="Port on 127.0.0.1."),
    site_dir: Path = typer.Option(Path("build/site"), "--site-dir", help="Directory to serve."),
    build_first: bool = typer.Option(True, "--build/--no-build", help="Build the site before serving."),
    papers: Path | None = PapersOption,
) -> None:
    """Serve the built site on http://127.0.0.1:PORT (Ctrl-C stops).

    Example: atlas serve --port 8000
    """
    import functools
    import http.server

    if build_first:
        build_cmd(site_dir=site_dir, strict=True, papers=papers)
    if not (site_dir / "index.html").exists():
        raise fail(f"{site_dir}/index.html not found: run `atlas build` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site_dir))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (try --port)", code=2) from None
    err.print(f"serving {site_dir} on http://127.0.0.1:{port}/ (Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
