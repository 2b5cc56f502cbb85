"""Parse record files: `papers/*.yaml` -> a `Catalog` of validated records and per-file errors.

Every problem becomes a `CatalogError` line `papers/x.yaml:LINE: field: message`, with the line taken
from the YAML node marks. YAML aliases are refused outright (a "billion laughs" document is rejected
before any expansion), and files must be UTF-8. Checks across records live in `catalog.validate`;
`catalog.load` runs both and is the one entry point for reading records.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from catalog.schema import Record

MAX_FILE_BYTES = 256 * 1024  # a record is a few KB; anything this large is a mistake or an attack
MAX_DEPTH = 20  # a record nests 3 levels; hundreds of '[' would exhaust Python's recursion
RECORD_SUFFIXES = (".yaml", ".yml")  # any case: only exactly ".yaml" is a record, the rest is reported


@dataclass(frozen=True, order=True)
class CatalogError:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class Catalog:
    records: list[Record]
    errors: list[CatalogError] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)  # record id -> file
    broken: set[str] = field(default_factory=set)  # stems of files that failed to load
    lines: dict[str, dict[tuple, int]] = field(default_factory=dict)  # record id -> key path -> line

    def line(self, record_id: str, key: str) -> int:
        return self.lines.get(record_id, {}).get((key,), 1)

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}


# libyaml's parser where PyYAML has it: the pure-Python scanner was ~80% of `atlas validate` (826 records)
_CLoader = getattr(yaml, "CSafeLoader", None)


class _NoAliasLoader(Reader, Scanner, Parser, Composer, SafeConstructor, Resolver):
    """SafeLoader that refuses aliases, so expansion bombs cost nothing (PyYAML without libyaml)."""

    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            _refuse_alias(self.peek_event())
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                _refuse_depth(self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refuse_alias(event) -> None:
    raise yaml.composer.ComposerError(
        None, None, "YAML aliases (*name) are not allowed in records", event.start_mark)


def _refuse_depth(event) -> None:
    raise yaml.composer.ComposerError(
        None, None, f"nested more than {MAX_DEPTH} levels deep (a record needs 3)", event.start_mark)


def _load_node(text: str):
    """(root node or None, constructed data) with aliases and deep nesting refused before composing."""
    if _CLoader is None:
        loader = _NoAliasLoader(text)
    else:
        depth = 0  # libyaml's events are cheap; its composer cannot be hooked, so check them first
        for event in yaml.parse(text, Loader=_CLoader):
            if isinstance(event, AliasEvent):
                _refuse_alias(event)
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    _refuse_depth(event)
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        loader = _CLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _line_index(node: Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path (('summary', 'method'), ('tags', 2)) to its 1-based line."""
    lines: dict[tuple, int] = {prefix: node.start_mark.line + 1}
    if isinstance(node, MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            lines.update(_line_index(value, path))
            lines[path] = key.start_mark.line + 1
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*prefix, i)))
    return lines


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "record"


def _line_for(lines: dict[tuple, int], loc: tuple) -> int:
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _clean_message(error: dict) -> str:
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; see site/contributing.md)"
    return msg


class _Problem(Exception):
    """One error that stops a file from being read: (line, field, message)."""


def _read_text(path: Path) -> str:
    """The file as text; _Problem if it cannot be read, is too large, not UTF-8 or empty."""
    try:
        if not path.is_file():  # a FIFO would block forever, a device never end
            raise _Problem(1, "file", "not a regular file (a directory, FIFO, device or broken link)")
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _Problem(1, "file", f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _Problem(1, "file", f"file is larger than the {MAX_FILE_BYTES}-byte limit for a record")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _Problem(line, "file", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                                     "save the file as UTF-8") from None
    if not text.strip():
        raise _Problem(1, "file", "empty file; a record needs at least id, title, authors, year, url, "
                                  "themes, taxonomy, summary")
    return text


def _compose(text: str) -> tuple[Node, dict]:
    """The YAML document's root node and its mapping; _Problem for bad YAML or a non-mapping."""
    try:
        node, data = _load_node(text)
        if node is None:
            raise _Problem(1, "file", "empty document")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise _Problem(line, "yaml", f"malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise _Problem(1, "yaml", f"malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _Problem(node.start_mark.line + 1, "record",
                       f"a record is a mapping of fields, got a {type(data).__name__}")
    _refuse_duplicate_keys(node)
    return node, data


def duplicate_key(node: Node, prefix: tuple = ()) -> tuple[int, str, int] | None:
    """(line, field, line of the first one) of the first key repeated in a mapping, else None.

    YAML keeps the last of two equal keys without a word: a record with two `results:` loses one."""
    if isinstance(node, MappingNode):
        first: dict = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if not isinstance(key, ScalarNode):  # a list or mapping as a key: construction refuses it
                continue
            if key.value in first:
                return line, _field_name((*prefix, key.value)), first[key.value]
            first[key.value] = line
            found = duplicate_key(value, (*prefix, key.value))
            if found:
                return found
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            found = duplicate_key(item, (*prefix, i))
            if found:
                return found
    return None


def _refuse_duplicate_keys(node: Node) -> None:
    found = duplicate_key(node)
    if found:
        line, field, first = found
        raise _Problem(line, field, f"duplicate key (also on line {first}); YAML keeps only the last")


def _schema_errors(exc: ValidationError, lines: dict[tuple, int], shown: str) -> list[CatalogError]:
    errors = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = _clean_message(err)
        if not loc and ": " in msg and msg.split(": ", 1)[0].isidentifier():
            field_name, msg = msg.split(": ", 1)  # model-level checks name their field
            loc = (field_name,)
        errors.append(CatalogError(shown, _line_for(lines, loc), _field_name(loc), msg))
    return errors


def parse_file(path: Path, display: str | None = None,
               lines_out: dict | None = None) -> tuple[Record | None, list[CatalogError]]:
    """Parse and validate one record file; never raises for bad content.

    `lines_out`, when given, receives the key-path -> line index of the file.
    """
    shown = display or str(path)
    try:
        node, data = _compose(_read_text(path))
    except _Problem as problem:
        return None, [CatalogError(shown, *problem.args)]

    lines = _line_index(node)
    if lines_out is not None:
        lines_out.update(lines)
    try:
        record = Record.model_validate(data)
    except ValidationError as exc:
        return None, _schema_errors(exc, lines, shown)

    if record.id != path.stem:
        message = f"'{record.id}' must equal the file name stem '{path.stem}'"
        return None, [CatalogError(shown, lines.get(("id",), 1), "id", message)]
    return record, []


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else as given."""
    try:
        path = Path(path)
        parent = _resolved(os.path.abspath(path.parent))  # absolute: the cache must not outlive a chdir
        return str((parent / path.name).relative_to(_resolved(os.getcwd())))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return str(path)


@functools.lru_cache(maxsize=256)
def _resolved(directory: str) -> Path:
    # every record and evidence file of a directory shares one resolve (2,500 calls per validate)
    return Path(directory).resolve()


def parse_dir(papers: Path) -> Catalog:
    """Parse every `*.yaml` in `papers` (an existing directory), without cross-record checks."""
    catalog = Catalog(records=[])
    try:
        names = sorted(Path(papers).iterdir())
    except OSError as exc:
        message = f"cannot list the directory: {exc.strerror}"
        catalog.errors.append(CatalogError(str(papers), 0, "papers", message))
        return catalog
    for path in (p for p in names if not p.name.startswith(".")):
        if path.suffix != ".yaml" and path.suffix.lower() in RECORD_SUFFIXES:
            catalog.errors.append(CatalogError(display_path(path), 1, "file",
                                               f"records end in .yaml: rename it to {path.stem}.yaml"))
    for path in (p for p in names if p.suffix == ".yaml" and not p.name.startswith(".")):
        lines: dict[tuple, int] = {}
        record, errors = parse_file(path, display_path(path), lines)
        catalog.errors.extend(errors)
        if errors:
            catalog.broken.add(path.stem)
        if record is not None:
            catalog.records.append(record)
            catalog.paths[record.id] = path
            catalog.lines[record.id] = lines
    return catalog
