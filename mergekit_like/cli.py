"""The ``merge`` command: a thin adapter over :mod:`mergekit_like.run` and friends.

    merge RECIPE OUT [key=value ...]     run a recipe (hydra override grammar)
    merge validate RECIPE [key=value ...]
    merge plan RECIPE [key=value ...]     dry run: tensors, bytes, peak memory
    merge schema                          the recipe JSON Schema
    merge methods                         every method with its parameters
    merge evolve CONFIG OUT               evolutionary search (mergekit_like.evolve)
    merge analyze RECIPE [OUT]            task vectors: norms, cosines, sign conflicts

User errors print one line per problem and exit with code 2, never a traceback.
Heavy libraries (torch, transformers, accelerate) are imported only when a merge runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_like.errors import Interrupted, MergeError
from mergekit_like.execute.stop import terminate_as_interrupt

if TYPE_CHECKING:
    from mergekit_like.recipe.loading import LoadedRecipe

SUBCOMMANDS = ("validate", "plan", "schema", "methods", "analyze")

EPILOG = """other commands:
  merge validate RECIPE [overrides]  check a recipe (and its models, when present)
  merge plan RECIPE [overrides]      dry run from headers: tensors, bytes, peak memory
  merge schema                       print the recipe JSON Schema
  merge methods                      list merge methods and their parameters
  merge moe CONFIG OUT               build a mixture of experts (mergekit-moe's config)
  merge evolve CONFIG OUT            CMA-ES search of a merge's parameters (mergekit-evolve)
  merge analyze RECIPE [OUT]         task vectors of the ingredients (or --models A B --base X)

overrides use hydra's grammar: key=value, +key=value (add), ++key=value, ~key (delete);
list items by index, e.g. models.0.parameters.weight=0.3
"""

TRUST_HELP = ("let ingredients' own Python code (a tokenizer_config.json auto_map) run when "
              "their tokenizers are loaded; without it, such code never runs")


def _trusted(docs: list[LoadedRecipe], ns: argparse.Namespace) -> list[LoadedRecipe]:
    """The documents, marked with ``--trust-remote-code`` when it was given."""
    if not ns.trust_remote_code:
        return docs
    return [dataclasses.replace(d, trust_remote_code=True) for d in docs]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merge", description="Merge fine-tuned models from a YAML recipe.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("out", type=Path, help="output folder (a Hugging Face model)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. parameters.density=0.5")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="compute device (default cpu; auto picks cuda when available)")
    p.add_argument("--out-shard-size", default="5GB", help="largest output shard (default 5GB)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge and write tensors holding NaN or Inf instead of stopping")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its partial output (.OUT.partial)")
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--chunk-size", default="16MiB",
                   help="rows of large tensors are merged in chunks of this size (elementwise "
                        "methods; default 16MiB per input)")
    p.add_argument("--max-gpu-memory", default=None, metavar="SIZE",
                   help="with --device cuda: keep the merge's tensors on the GPU under SIZE "
                        "(e.g. 8GiB): chunks shrink to fit, and a tensor that cannot fit is "
                        "merged on the CPU")
    p.add_argument("--kernels", default="auto", choices=("auto", "eager", "compiled"),
                   help="run the task-arithmetic family (ties, dare, breadcrumbs...) as eager "
                        "torch or compiled fused kernels (same bytes); auto compiles for large "
                        "merges on CPU")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="split the output shards across N local processes (default 1); under "
                        "torchrun or accelerate launch, the launcher's processes are used")
    p.add_argument("--allow-crimes", action="store_true",
                   help="merge ingredients whose architectures differ (mergekit's flag)")
    p.add_argument("--no-copy-tokenizer", dest="copy_tokenizer", action="store_false",
                   help="write no tokenizer files unless the recipe sets the tokenizer")
    p.add_argument("--no-model-card", dest="write_model_card", action="store_false",
                   help="write no README.md model card")
    p.add_argument("--allow-code", action="store_true",
                   help="allow the recipe's evaluation.python to run (custom scorer code)")
    p.add_argument("--offline", action="store_true",
                   help="use only models on this machine (as HF_HUB_OFFLINE=1): no download")
    p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    p.add_argument("-m", "--multirun", action="store_true",
                   help="sweep: run every combination of comma-separated override values "
                        "into its own folder under OUT, with a summary of their scores")
    return p


def _sub_parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"merge {cmd}")
    if cmd in ("validate", "plan"):
        p.add_argument("recipe", type=Path)
        p.add_argument("overrides", nargs="*")
        p.add_argument("--offline", action="store_true",
                       help="no network: hub models not in the cache are not inspected")
        p.add_argument("--allow-crimes", action="store_true",
                       help="accept ingredients whose architectures differ")
        p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    if cmd == "plan":
        p.add_argument("--summary", action="store_true", help="totals only, no tensor list")
    if cmd == "analyze":
        p.description = ("Task vectors (each model minus the base): norms, pairwise cosines "
                         "and angles, sign conflicts after TIES's trim. Writes analysis.json, "
                         "analysis.md and PNG plots into OUT; without OUT, prints the report.")
        p.add_argument("paths", nargs="*", type=Path, metavar="RECIPE [OUT]",
                       help="a recipe and the output folder; with --models, only OUT")
        p.add_argument("--models", nargs="+", metavar="MODEL", help="models to compare")
        p.add_argument("--base", help="the base model (with --models)")
        p.add_argument("--density", nargs="+", type=float, default=None, metavar="D",
                       help="trim densities of the sign statistics (default 0.1 0.2 0.5 1)")
        p.add_argument("--force", action="store_true", help="replace an existing OUT")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--no-plots", dest="plots", action="store_false", help="no PNG plots")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``merge`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with terminate_as_interrupt():  # kill PID stops a run as Ctrl-C does
            if args and args[0] == "moe":  # mergekit-moe's configs
                from mergekit_like.moe.command import moe_main

                code = moe_main(args[1:])
            elif args and args[0] == "evolve":  # merge evolve CONFIG OUT: its own options
                from mergekit_like.evolve.command import main as evolve_main

                code = evolve_main(args[1:])
            elif args and args[0] in SUBCOMMANDS:
                code = _subcommand(args[0], _sub_parser(args[0]).parse_intermixed_args(args[1:]))
            else:
                code = _merge(_run_parser().parse_intermixed_args(args), args)
            sys.stdout.flush()  # a reader gone (`merge methods | head`) shows here, not at exit
            return code
    except BrokenPipeError:
        return _reader_gone()
    except MergeError as exc:
        prefix = "" if isinstance(exc, Interrupted) else "error: "
        for problem in exc.problems:
            print(f"{prefix}{problem}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


def _reader_gone() -> int:
    """stdout's reader has exited: stop quietly, as a tool killed by SIGPIPE does (141)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def _merge(ns: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from mergekit_like.moe.config import is_moe_file

    if is_moe_file(ns.recipe):  # a mergekit-moe config (experts, gate_mode): `merge moe`
        from mergekit_like.moe.command import run_moe

        return run_moe(ns.recipe, ns.out, ns.overrides, ns)
    from mergekit_like.execute.model_card import reproducing_command
    from mergekit_like.execute.setup import MergeOptions
    from mergekit_like.execute.write import write_model
    from mergekit_like.io.out_path import check_out_path
    from mergekit_like.io.writer import parse_size
    from mergekit_like.plan.build import build_plan
    from mergekit_like.recipe.loading import load_recipe, load_recipe_documents

    sizes = {}
    for flag, text in (("--out-shard-size", ns.out_shard_size), ("--chunk-size", ns.chunk_size)):
        try:
            sizes[flag] = parse_size(text)
        except ValueError as exc:
            raise MergeError(f"{flag}: {exc}") from None
    shard, chunk = sizes["--out-shard-size"], sizes["--chunk-size"]
    max_gpu = None
    if ns.max_gpu_memory is not None:
        if ns.device == "cpu":
            raise MergeError("--max-gpu-memory: applies to --device cuda or auto, not cpu")
        try:
            max_gpu = parse_size(ns.max_gpu_memory)
        except ValueError as exc:
            raise MergeError(f"--max-gpu-memory: {exc}") from None
    if ns.num_processes < 1:
        raise MergeError(f"--num-processes: expected 1 or more, got {ns.num_processes}")
    check_out_path(ns.out)
    say = not ns.quiet and os.environ.get("RANK", "0") == "0"  # one rank of torchrun speaks
    options = MergeOptions(device=ns.device, out_shard_bytes=shard, force=ns.force,
                           resume=ns.resume, allow_nonfinite=ns.allow_nonfinite,
                           num_processes=ns.num_processes,
                           seed=ns.seed, quiet=ns.quiet, chunk_bytes=chunk, kernels=ns.kernels,
                           max_gpu_bytes=max_gpu, allow_crimes=ns.allow_crimes,
                           copy_tokenizer=ns.copy_tokenizer,
                           write_model_card=ns.write_model_card,
                           command=reproducing_command(argv, ns.out))
    from mergekit_like.io.hub import HubAccess
    from mergekit_like.plan.preflight import fetch_for_merge

    access = HubAccess.from_env(offline=ns.offline, progress=say)
    if ns.multirun:  # sweeps: each setting runs as `merge RECIPE OUT` would run it
        from mergekit_like.run import run_loaded_recipe
        from mergekit_like.soups.sweep import run_sweep

        run_sweep(ns.recipe, ns.out, ns.overrides, options, allow_code=ns.allow_code,
                  prepare=lambda recipe, overrides: fetch_for_merge(
                      load_recipe_documents(recipe, overrides), access, ns.allow_crimes),
                  run_one=lambda recipe, overrides, folder, opts: run_loaded_recipe(
                      _trusted([load_recipe(recipe, overrides)], ns)[0], folder, opts,
                      ns.allow_code))
        return 0
    docs = _trusted(load_recipe_documents(ns.recipe, ns.overrides), ns)
    fetch_for_merge(docs, access, ns.allow_crimes)
    if len(docs) > 1:  # mergekit-multi: named merges in dependency order
        from mergekit_like.recipe.multi import run_documents

        def write_doc(doc: LoadedRecipe, folder: Path) -> None:
            plan = build_plan(doc, allow_crimes=ns.allow_crimes)
            for warning in plan.warnings:
                print(warning, file=sys.stderr)
            write_model(plan, folder, options)
            if say:
                print(f"{doc.recipe.name or 'final merge'}: wrote {folder}")

        run_documents(docs, ns.out, write_doc)
        return 0
    loaded = docs[0]
    from mergekit_like.datamerge import DATAMERGE_METHODS
    from mergekit_like.soups import needs_runner

    # fisher, regmean, adamerging; a soup method, or an evaluation: block
    if loaded.recipe.merge_method in DATAMERGE_METHODS or needs_runner(loaded.recipe):
        from mergekit_like.run import run_loaded_recipe

        run_loaded_recipe(loaded, ns.out, options, ns.allow_code)
        return 0
    plan = build_plan(loaded, allow_crimes=ns.allow_crimes)
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    write_model(plan, ns.out, options)
    if say:
        print(f"wrote {ns.out} ({len(plan.tensors)} tensors, {_human(plan.write_bytes)})")
    return 0


def _subcommand(cmd: str, ns: argparse.Namespace) -> int:
    if cmd == "schema":
        from mergekit_like.recipe.schema import recipe_schema

        print(json.dumps(recipe_schema(), indent=2))
        return 0
    if cmd == "methods":
        from mergekit_like.datamerge import DATAMERGE_METHODS
        from mergekit_like.methods import REGISTRY
        from mergekit_like.soups import SOUP_METHODS

        print("\n\n".join(m.describe() for m in [*REGISTRY.values(), *SOUP_METHODS.values(),
                                                  *DATAMERGE_METHODS.values()]))
        return 0
    if cmd == "analyze":
        return _analyze(ns)
    from mergekit_like.recipe.loading import load_recipe_documents
    from mergekit_like.soups import SOUP_METHODS

    docs = _trusted(load_recipe_documents(ns.recipe, ns.overrides), ns)
    if len(docs) > 1:
        from mergekit_like.recipe.multi import order_documents

        names = [d.recipe.name or "(unnamed final merge)" for d in order_documents(docs)]
        if cmd == "plan":
            raise MergeError(f"{ns.recipe}: {len(docs)} documents; `merge plan` takes one")
        print(f"{ns.recipe}: {len(docs)} valid documents, run in order: {' -> '.join(names)}")
        return 0
    loaded = docs[0]
    if loaded.recipe.merge_method in SOUP_METHODS:  # check/plan the soup's ingredients
        from mergekit_like.soups.runner import uniform_recipe

        loaded = uniform_recipe(loaded)
    from mergekit_like.datamerge import DATAMERGE_METHODS

    if loaded.recipe.merge_method in DATAMERGE_METHODS:  # check/plan the ingredients
        from mergekit_like.datamerge.runner import ingredient_recipe

        loaded = ingredient_recipe(loaded)
    from mergekit_like.io.hub import HubAccess
    from mergekit_like.io.hub_remote import HubModels
    from mergekit_like.plan.preflight import validate_recipe
    from mergekit_like.recipe.checks import check_recipe

    access = HubAccess.from_env(offline=ns.offline)
    if cmd == "validate":
        return validate_recipe(loaded, access, ns.allow_crimes)
    from mergekit_like.execute.steps import estimate_peak_bytes
    from mergekit_like.plan.build import build_plan

    check_recipe(loaded).raise_problems()
    plan = build_plan(loaded, models=HubModels(access), allow_crimes=ns.allow_crimes)
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    if not ns.summary:
        for t in plan.tensors:
            inputs = ", ".join(f"{plan.models[r.model].ref}" for r in t.inputs)
            base = f" base={plan.models[t.base.model].ref}" if t.base else ""
            print(f"{t.name}\t{list(t.shape)}\t{t.dtype}\t{t.method}\t[{inputs}]{base}")
    print(f"tensors: {len(plan.tensors)}  layers: {plan.output.num_layers}  "
          f"read: {_human(plan.read_bytes)}  write: {_human(plan.write_bytes)}  "
          f"estimated peak memory: {_human(estimate_peak_bytes(plan))} + runtime")
    return 0


def _analyze(ns: argparse.Namespace) -> int:
    from mergekit_like.analyze import (
        DEFAULT_DENSITIES,
        analyze_to_folder,
        models_from_args,
        models_from_recipe,
    )
    from mergekit_like.analyze.report import markdown

    if ns.models:
        if not ns.base:
            raise MergeError("--base: give the base model of --models")
        if len(ns.paths) > 1:
            raise MergeError("merge analyze --models ... takes at most one folder (OUT)")
        which, out = models_from_args(ns.models, ns.base), (ns.paths or [None])[0]
    else:
        if not ns.paths or len(ns.paths) > 2:
            raise MergeError("merge analyze: give RECIPE [OUT], or --models A B ... --base X")
        from mergekit_like.recipe.loading import load_recipe

        which, out = models_from_recipe(load_recipe(ns.paths[0])), (ns.paths[1:] or [None])[0]
    data = analyze_to_folder(which, out, ns.density or DEFAULT_DENSITIES,
                             progress=not ns.quiet, force=ns.force, plots=ns.plots)
    if out is None:
        print(markdown(data), end="")
    elif not ns.quiet:
        print(f"wrote {out}: analysis.json, analysis.md" + "".join(
            f", {p}" for p in data["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
