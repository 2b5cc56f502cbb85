"""The controlled vocabulary: themes, taxonomy leaves and tags, loaded once from package data."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Vocabulary:
    themes: dict[str, str]  # theme -> description
    taxonomy: dict[str, str]  # leaf path -> description
    tags: frozenset[str]

    def taxonomy_tree(self) -> dict[str, list[str]]:
        """Theme-level root -> its leaves, in file order."""
        tree: dict[str, list[str]] = {}
        for leaf in self.taxonomy:
            tree.setdefault(leaf.split("/", 1)[0], []).append(leaf)
        return tree


def suggest(value: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid value, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


@cache
def vocabulary() -> Vocabulary:
    data_dir = resources.files("catalog") / "data"
    raw = yaml.safe_load((data_dir / "vocabulary.yaml").read_text(encoding="utf-8"))
    tags = [
        line.strip()
        for line in (data_dir / "tags.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return Vocabulary(themes=dict(raw["themes"]), taxonomy=dict(raw["taxonomy"]), tags=frozenset(tags))
