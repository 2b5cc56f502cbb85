"""mkdocs hook: adds the pages generated from `papers/` (catalog.site) to the build.

Records are read once through catalog.load; similar papers come from the search engine and are
cached by content hash (catalog.site_data), so a rebuild with unchanged records recomputes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.plugins.atlas")
_state: dict = {}


def on_config(config):
    from catalog.load import load_records
    from catalog.site_data import site_data

    root = Path(config.config_file_path).parent
    papers = Path(os.environ.get("ATLAS_PAPERS", root / "papers"))
    records = load_records(papers)  # CatalogInvalid stops the build with every error listed
    _state["data"] = site_data(records, root, papers=papers)
    return config


def on_files(files, config):
    from catalog.site import generate_pages

    for path, content in generate_pages(_state["data"]).items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    return files
