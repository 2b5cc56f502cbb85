"""Entry point of the `atlas` command: imports every command module so it registers itself."""

from catalog.cli_app import app
from catalog.commands import (  # noqa: F401  each module registers its commands on `app`
    catalog_cmds,  # validate, list, show, export, stats, bench, add, enrich
    impl_cmds,  # impls, run
    search_cmds,  # search, similar, index
    site_cmds,  # build, serve
)

__all__ = ["app"]
