"""Entry point of the `atlas` command: imports every command module so it registers itself.

Before anything imports torch, OpenMP is told to sleep rather than spin while it waits: on a shared
machine (other processes on the cores) spinning threads steal the time slices the working thread
needs: measured under load, GPTQ on a 1024-input layer took 21.6 s with the default policy and 0.55 s
with `OMP_WAIT_POLICY=PASSIVE` (reference_impls/common/PERFORMANCE.md). A value already in the
environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from catalog.cli_app import app  # noqa: E402
from catalog.commands import (  # noqa: E402, F401  each module registers its commands on `app`
    add_enrich_cmds,  # add, enrich
    catalog_cmds,  # validate, list, show, export, stats, bench
    impl_cmds,  # impls, run
    search_cmds,  # search, similar, index
    site_cmds,  # build, serve
)

__all__ = ["app"]
