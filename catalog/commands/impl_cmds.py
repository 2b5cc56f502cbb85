"""Reference-implementation commands: `atlas impls` and `atlas run METHOD`.

torch and the method modules are imported inside the commands, so `atlas --help` stays fast.
`atlas run` accepts each method's own options (declared in the registry) in kebab-case; typer cannot
declare them statically, so they arrive as extra arguments and are parsed here against the registry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from catalog.cli_app import PapersOption, app, papers_dir
from catalog.commands.catalog_cmds import invalid_exit
from catalog.load import CatalogInvalid

out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)  # data is never markup
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), " ", message))
    return typer.Exit(code)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.command()
def impls(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List the reference implementations and the papers they implement.

    Example: atlas impls --json
    """
    from reference_impls.common import registry

    methods = registry.all_methods()
    for module, why in registry.DISCOVERY_ERRORS.items():
        err.print(Text.assemble(("warning:", "yellow"), f" {module} not loaded ({why})"))
    if as_json:
        _print_json([m.describe() for m in methods])
        return
    table = Table(title="Reference implementations")
    for col in ("method", "family", "papers", "fidelity", "options (default)"):
        table.add_column(col)
    for m in methods:
        opts = ", ".join(f"--{k.replace('_', '-')} {o.default}" for k, o in m.options.items())
        table.add_row(m.name, m.family, ", ".join(m.papers), m.fidelity, opts)
    out.print(table)


def parse_method_options(tokens: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    """`--group-size 128 --act-order --sym=false` -> {"group_size": 128, "act_order": True, "sym": False}.

    `declared` maps option names (snake_case) to registry.Option. A bool option alone means true;
    `--no-NAME` means false. Raises ValueError naming the valid options.
    """
    valid = ", ".join(f"--{k.replace('_', '-')}" for k in declared) or "(none)"
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"unexpected argument {token!r}; method options: {valid}")
        flag, eq, inline = token[2:].partition("=")
        name = flag.replace("-", "_")
        negated = name.startswith("no_") and name[3:] in declared and declared[name[3:]].type is bool
        if negated:
            name = name[3:]
        if name not in declared:
            raise ValueError(f"unknown option --{flag}; valid options: {valid}")
        option = declared[name]
        if negated:
            value, i = False, i + 1
        elif eq:
            value, i = inline, i + 1
        elif option.type is bool and (i + 1 == len(tokens) or tokens[i + 1].startswith("--")):
            value, i = True, i + 1
        elif i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 2
        else:
            raise ValueError(f"option --{flag} needs a value")
        try:
            parsed[name] = option.parse(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ValueError(f"--{flag}: {exc}") from None
    return parsed


def _metrics_table(record: dict) -> Table:
    table = Table(title=f"{record['method']} on {record['model']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    options = " ".join(f"{k}={v}" for k, v in record["options"].items())
    table.add_row("options", options or "-")
    fp_tasks = record["metrics"].get("tasks_fp", {})
    for key, value in record["metrics"].items():
        if key == "tasks":  # one row per task, beside the uncompressed model's score
            for name, score in value.items():
                fp = fp_tasks.get(name, float("nan"))
                table.add_row(f"task {name}", f"{score:.4g} (uncompressed {fp:.4g})")
        elif key not in ("tasks_fp", "tasks_detail"):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for stage in record.get("stages", []):
        table.add_row(f"stage {stage['method']}", f"{stage['bits_per_weight']:.3f} bits/weight alone, "
                      f"{stage['time_s']:.1f}s, ledger {stage['ledger_merge'] or '-'}")
    table.add_row("bits per weight", f"{record['bits_per_weight']:.3f}")
    table.add_row("parameters", f"{record['params']:,}")
    table.add_row("time (s)", f"{record['time_s']:.2f}")
    return table


def _check_run_arguments(*, model: str, save: Path | None, **run_args) -> None:
    """What the arguments alone show wrong fails before anything is imported or loaded."""
    from reference_impls.common.run_checks import check_run_args, check_save_dir, model_problem

    try:
        check_run_args(**run_args)
        check_save_dir(save)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    problem = model_problem(model)
    if problem:
        raise _fail(problem, 2)
    if run_args["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise _fail("--device cuda: no CUDA device is available here", 2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    method: str = typer.Argument(..., help="Method name (see `atlas impls`), or a+b to apply a then b."),
    model: str = typer.Option("causal", "--model",
                              help="causal, encoder, or a local Hugging Face model directory."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    calib_samples: int = typer.Option(128, "--calib-samples", help="Calibration samples (windows or texts)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration draw."),
    save: Path | None = typer.Option(None, "--save",
                                     help="Save the compressed model (Hugging Face format) here."),
    eval_windows: int | None = typer.Option(None, "--eval-windows",
                                            help="Cap the held-out windows (quick runs)."),
    eval_dtype: str = typer.Option("auto", "--eval-dtype",
                                   help="Evaluation precision: auto (bf16 autocast where native and within "
                                   "0.1% of float32 on the reference), float32 or bfloat16."),
    tasks: bool = typer.Option(False, "--tasks",
                               help="Also score the task suite beyond perplexity (code completion, recall, "
                               "long context; encoder: paper retrieval, STS)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result record as JSON."),
    papers: Path | None = PapersOption,
) -> None:
    """Run one method on a small model and print its metrics; method options follow in kebab-case.

    Example: atlas run gptq --model causal --bits 4 --group-size 128 --act-order
             atlas run sparsegpt+gptq --sparsity 0.5 --gptq.bits 4 --gptq.group-size 128 --tasks
    (a+b applies a, then b to the model a left; an option two stages declare takes the stage's name)
    """
    _check_run_arguments(model=model, device=device, calib_samples=calib_samples, seed=seed,
                         eval_windows=eval_windows, save=save)

    from reference_impls.common import registry
    from reference_impls.common.models import ModelMissingError
    from reference_impls.common.runner import SaveFailed, run_method

    try:
        methods = [registry.get(name) for name in method.split("+")]
    except registry.UnknownMethodError as exc:
        raise _fail(str(exc)) from None
    declared = {k: o for m in methods for k, o in m.options.items()}
    if len(methods) > 1:  # --gptq.bits: one stage's option (compose.split_options)
        declared.update({f"{m.name.replace('-', '_')}.{k}": o for m in methods for k, o in m.options.items()})
    try:
        options = parse_method_options(list(ctx.args), declared)
    except ValueError as exc:
        raise _fail(f"{method}: {exc}") from None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    save_error = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"{method}: blocks", total=None)
        def on_blocks(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            record = run_method(method, model=model, device=device, calib_samples=calib_samples, seed=seed,
                                save=save, eval_windows=eval_windows, papers_dir=papers_dir(papers),
                                eval_dtype=eval_dtype,
                                options=options, progress=on_blocks, tasks=tasks)
        except SaveFailed as exc:  # the run itself finished: its metrics are printed all the same
            record, save_error = exc.record, exc
        except ModelMissingError as exc:
            raise _fail(str(exc), 2) from None
        except CatalogInvalid as exc:  # the encoder is evaluated on the catalog's records
            raise invalid_exit(exc) from None
        except ValueError as exc:
            raise _fail(f"{method}: {exc}") from None
    if as_json:
        _print_json(record)
    else:
        out.print(_metrics_table(record))
        if save is not None and save_error is None:
            out.print(f"saved to {save}")
    if save_error is not None:
        raise _fail(f"--save {save}: the model could not be saved ({save_error.strerror}); "
                    "the metrics above are those of the finished run", 2)


def _method_figures(method: str, model: str) -> tuple[float, float, str]:
    """(weight bits per parameter, held/full KV-byte ratio, which run) from results/METHOD.json."""
    from reference_impls.common import registry

    m = registry.get(method)
    path = Path("results") / f"{m.name}.json"
    if not path.is_file():
        raise ValueError(f"--method {method}: no stored results ({path}); run `atlas bench {m.name}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"--method {method}: {path} is not a readable results file; "
                         f"`atlas bench {m.name}` writes it again")
    runs = [r for r in runs if isinstance(r, dict) and r.get("model") == model
            and isinstance(r.get("metrics"), dict) and isinstance(r.get("options", {}), dict)]
    if not runs:
        raise ValueError(f"--method {method}: {path} has no run on --model {model}")
    defaults = m.defaults()
    run = next((r for r in runs if r.get("options") == defaults), runs[0])
    metrics = run["metrics"]
    return (metrics.get("model_bits_per_param", 16.0), metrics.get("kv_bytes_ratio", 1.0),
            " ".join(f"{k}={v}" for k, v in run.get("options", {}).items()))


@app.command()
def memory(
    model: str = typer.Argument("causal", help="causal, encoder, a model directory or a config.json."),
    method: str | None = typer.Option(None, "--method",
                                      help="Take weight bits and KV bytes from this method's stored run."),
    context: int | None = typer.Option(None, "--context",
                                       help="Tokens in the cache (default: full context)."),
    weight_bits: float | None = typer.Option(None, "--weight-bits", help="Bits per parameter (default 16)."),
    kv_bits: float | None = typer.Option(
        None, "--kv-bits", help="Bits per cached key/value element (default 32: the runs hold float32)."),
    kv_budget: int | None = typer.Option(None, "--kv-budget", help="Cache positions kept (eviction)."),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    """Weight bytes, KV-cache bytes, bytes moved and DRAM energy per generated token.

    Example: atlas memory causal --method gptq --context 256
    """
    from reference_impls.common import memory as mem
    from reference_impls.common import registry
    from reference_impls.common.models import ENCODER_TYPES, ModelMissingError

    if method and kv_bits is not None:
        # the stored run's KV ratio is already measured against the float32 cache: scaling it by
        # --kv-bits as well would count the quantization twice
        raise _fail("--kv-bits and --method exclude each other: --method takes the KV bytes its run measured")
    try:
        config = mem.load_config(model)
        bits, kv_ratio, run = (_method_figures(method, model) if method else (16.0, 1.0, ""))
        est = mem.estimate(config, params=mem.count_params(config), context=context, kv_budget=kv_budget,
                           weight_bits_per_param=weight_bits or bits, kv_bits=(kv_bits or 32.0) * kv_ratio,
                           causal=config.model_type not in ENCODER_TYPES)
    except ModelMissingError as exc:
        raise _fail(str(exc), 2) from None
    except (ValueError, registry.UnknownMethodError) as exc:
        raise _fail(str(exc)) from None
    data = {"model": model, "method": method, "method_run": run or None, **est.as_dict()}
    if as_json:
        _print_json(data)
        return
    title = f"memory of {model}" + (f" with {method} ({run})" if method else "")
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [("parameters", f"{est.params:,}"),
            ("weight bits / parameter", f"{est.weight_bits_per_param:.3f}"),
            ("weight bytes", f"{est.weight_bytes:,}"), ("KV bytes per token", f"{est.kv_bytes_per_token:,}"),
            (f"KV bytes at context {est.context}", f"{est.kv_bytes:,} ({est.kv_positions} positions)"),
            ("bytes moved per generated token", f"{est.bytes_per_token:,}"),
            ("energy per token (DRAM)", f"{est.energy_per_token_j * 1e6:.3f} µJ")]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    out.print(f"assumption: {est.assumption}", highlight=False)
