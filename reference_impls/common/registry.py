"""The registry of reference implementations: what `atlas impls` lists and `atlas run` runs.

A method module registers its model-level entry with a decorator:

    @register("gptq", family="quantization", papers=["gptq"], fidelity="exact",
              summary="GPTQ: second-order post-training weight quantization",
              options={"bits": Option(4, "bits per weight"), "act_order": Option(False, "...")})
    def run_gptq(ctx: RunContext, *, bits, act_order) -> dict: ...

Every module under `reference_impls/<family>/` (except `common`) is imported on first use, so a new
method file registers itself without editing this one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIDELITIES = ("exact", "simplified", "family")


@dataclass(frozen=True)
class Option:
    default: Any
    help: str
    choices: tuple | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def parse(self, text: str) -> Any:
        """Convert a command-line string to this option's type, checking choices."""
        kind = self.type
        if kind is bool:
            low = text.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"expected true or false, got {text!r}")
            value: Any = low in ("1", "true", "yes")
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        else:
            value = text
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, got {text!r}")
        return value


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    papers: tuple[str, ...]
    fidelity: str
    summary: str
    module: str
    apply: Callable[..., dict]
    options: dict[str, Option] = field(default_factory=dict)
    bench: tuple[dict, ...] = ()  # option sets of the benchmark grid (empty: the defaults)
    bench_models: tuple[str, ...] = ("causal", "encoder")
    check: Callable[..., None] | None = None  # options → ValueError, run before the model is loaded

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}

    def describe(self) -> dict:
        """The `atlas impls --json` entry."""
        return {
            "name": self.name, "family": self.family, "papers": list(self.papers), "fidelity": self.fidelity,
            "summary": self.summary, "module": self.module,
            "options": {
                k: {"default": o.default, "type": o.type.__name__, "help": o.help,
                    **({"choices": list(o.choices)} if o.choices else {})}
                for k, o in self.options.items()
            },
        }


class UnknownMethodError(ValueError):
    """A method name that is not registered (bad user input)."""


_REGISTRY: dict[str, Method] = {}
_DISCOVERED = False
DISCOVERY_ERRORS: dict[str, str] = {}  # module -> why it failed to import


def register(name: str, *, family: str, papers: list[str], fidelity: str, options: dict[str, Option],
             summary: str = "", bench: list[dict] | None = None,
             bench_models: tuple[str, ...] = ("causal", "encoder"),
             check: Callable[..., None] | None = None) -> Callable:
    """Decorator: register `apply(ctx, **options) -> dict of method-specific metrics`.

    `bench` lists the option sets `atlas bench` runs on each of `bench_models`; `check(**options)`, when
    given, raises ValueError for option combinations that are wrong whatever the model (run first).
    """
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity {fidelity!r} is not one of {FIDELITIES}")

    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        if name in _REGISTRY and _REGISTRY[name].module != fn.__module__:
            raise ValueError(f"method {name!r} registered twice ({_REGISTRY[name].module}, {fn.__module__})")
        _REGISTRY[name] = Method(name=name, family=family, papers=tuple(papers), fidelity=fidelity,
                                 summary=summary, module=fn.__module__, apply=fn, options=dict(options),
                                 bench=tuple(bench or ()), bench_models=tuple(bench_models), check=check)
        return fn

    return wrap


def discover() -> None:
    """Import every method module under reference_impls/ once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import reference_impls

    for pkg in pkgutil.iter_modules(reference_impls.__path__):
        if not pkg.ispkg or pkg.name == "common":
            continue
        try:
            family = importlib.import_module(f"reference_impls.{pkg.name}")
        except Exception as exc:
            DISCOVERY_ERRORS[f"reference_impls.{pkg.name}"] = f"{type(exc).__name__}: {exc}"
            continue
        for mod in pkgutil.iter_modules(family.__path__):
            if not mod.name.startswith("_"):
                name = f"reference_impls.{pkg.name}.{mod.name}"
                try:
                    importlib.import_module(name)
                except Exception as exc:  # one broken method file must not hide all the others
                    DISCOVERY_ERRORS[name] = f"{type(exc).__name__}: {exc}"
    _DISCOVERED = True


def all_methods() -> list[Method]:
    discover()
    return sorted(_REGISTRY.values(), key=lambda m: (m.family, m.name))


def _module_declaring(name: str) -> str | None:
    """The method module whose source registers `name`, found by reading the files (no imports).

    `atlas run rtn` then imports rtn.py alone instead of every method module with their optional
    packages (hqq, peft, kvpress pull in torch._dynamo and more): 3-12 s of start-up, at load.
    """
    import re
    from pathlib import Path

    import reference_impls

    declares = re.compile(r"@register\(\s*[\"']" + re.escape(name) + r"[\"']")
    for path in sorted(Path(reference_impls.__path__[0]).glob("*/[!_]*.py")):
        if path.parent.name != "common" and declares.search(path.read_text(encoding="utf-8")):
            return f"reference_impls.{path.parent.name}.{path.stem}"
    return None


def get(name: str) -> Method:
    if name not in _REGISTRY and not _DISCOVERED and (module := _module_declaring(name)):
        try:
            importlib.import_module(module)
        except Exception:
            discover()  # records why the module failed, beside every other module
    if name not in _REGISTRY:
        discover()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
