"""Site commands: build the static site into build/site and serve it on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer

from catalog.cli_app import PapersOption, app, papers_dir
from catalog.commands.catalog_cmds import err, fail, invalid_exit
from catalog.load import CatalogInvalid
from catalog.site import MKDOCS_CONFIG, build_site

ForceOption = typer.Option(False, "--force",
                           help="Replace --site-dir even when it holds files that atlas did not build.")


@app.command("build")
def build_cmd(
    site_dir: Path = typer.Option(Path("build/site"), "--site-dir", help="Output directory."),
    strict: bool = typer.Option(True, help="Fail on any mkdocs warning (broken links included)."),
    force: bool = ForceOption,
    papers: Path | None = PapersOption,
) -> None:
    """Build the static site from the catalog into build/site.

    The site is built aside and swapped in when complete: an interrupted build keeps the previous
    site. A --site-dir that holds other files is refused unless --force.

    Example: atlas build && atlas serve --no-build
    """
    import time

    from mkdocs.exceptions import Abort, ConfigurationError

    from catalog.site_dir import SiteDirError

    if not MKDOCS_CONFIG.exists():
        raise fail("mkdocs.yml not found: run atlas build from the repository root")
    start = time.perf_counter()
    try:
        build_site(papers_dir(papers), site_dir, strict=strict, force=force)
    except CatalogInvalid as exc:
        raise invalid_exit(exc) from None
    except SiteDirError as exc:
        raise fail(str(exc)) from None
    except (Abort, ConfigurationError) as exc:
        raise fail(f"site build failed: {exc}") from None
    except OSError as exc:  # a full disk, a read-only directory
        raise fail(f"site build failed: {exc.strerror or exc} ({exc.filename or site_dir})", code=2) from None
    err.print(f"built {site_dir} in {time.perf_counter() - start:.1f} s", highlight=False, markup=False)


@app.command("serve")
def serve_cmd(
    port: int = typer.Option(8000, min=0, max=65535, help="Port on 127.0.0.1 (0: any free port)."),
    site_dir: Path = typer.Option(Path("build/site"), "--site-dir", help="Directory to serve."),
    build_first: bool = typer.Option(True, "--build/--no-build", help="Build the site before serving."),
    force: bool = ForceOption,
    papers: Path | None = PapersOption,
) -> None:
    """Serve the built site on http://127.0.0.1:PORT (Ctrl-C stops).

    The port is taken before the build, so a port in use is reported at once.

    Example: atlas serve --port 8000
    """
    import functools
    import http.server

    from catalog.site_dir import site_problem

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # one line per request on stderr, never markup
            err.print(f"{self.address_string()} {format % args}", markup=False, highlight=False)

    handler = functools.partial(Handler, directory=str(site_dir))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (try --port)", code=2) from None
    try:
        if build_first:
            build_cmd(site_dir=site_dir, strict=True, force=force, papers=papers)
        problem = site_problem(site_dir)
        if problem:
            raise fail(problem)
        real_port = server.server_address[1]
        err.print(f"serving {site_dir} on http://127.0.0.1:{real_port}/ (Ctrl-C to stop)", highlight=False,
                  markup=False)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
