"""Entry point of the `atlas` command: imports every command module so it registers itself."""

from catalog.cli_app import app
from catalog.commands import catalog_cmds  # noqa: F401  validate, list, show, export, stats, add, enrich

for _optional in ("search_cmds", "site_cmds", "impl_cmds"):
    # Each capability owns one module; a missing one (during development) must not break the rest.
    try:
        __import__(f"catalog.commands.{_optional}")
    except ModuleNotFoundError as exc:  # pragma: no cover
        if exc.name != f"catalog.commands.{_optional}":
            raise

__all__ = ["app"]
