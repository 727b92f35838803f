"""The merge, start to end: load the recipe, plan it, execute into a staged folder, publish.

This is the library API behind ``merge RECIPE OUT``::

    from mergekit_like.run import MergeOptions, run_merge
    run_merge(Path("recipes/linear.yaml"), Path("out"), MergeOptions(device="cpu"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergekit_like.device import resolve_device
from mergekit_like.execute import DEFAULT_CHUNK_BYTES, ExecOptions, execute
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import ShardWriter, layout_shards
from mergekit_like.journal import Journal, fingerprint
from mergekit_like.loader import load_recipe
from mergekit_like.output import (
    check_output_path,
    resolved_recipe_yaml,
    staged_output,
    write_metadata,
)
from mergekit_like.plan import Plan, build_plan

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class MergeOptions:
    """Options of a merge run (the CLI's flags)."""

    device: str = "cpu"
    out_shard_bytes: int = DEFAULT_SHARD_BYTES
    force: bool = False
    seed: int = 0
    quiet: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    resume: bool = False
    allow_nonfinite: bool = False


def write_model(plan: Plan, out: Path, options: MergeOptions) -> None:
    """Execute ``plan`` and publish the output folder at ``out`` (atomically)."""
    check_output_path(plan, out)
    device = resolve_device(options.device)
    layout = layout_shards([(t.name, t.dtype, t.shape) for t in plan.tensors],
                           options.out_shard_bytes)
    exec_options = ExecOptions(device=device, seed=options.seed,
                               allow_nonfinite=options.allow_nonfinite,
                               chunk_bytes=options.chunk_bytes, progress=not options.quiet)
    print_ = fingerprint(resolved_recipe_yaml(plan), *layout.headers, repr(layout.files),
                         str(options.seed), plan.compute_dtype, device)
    with staged_output(out, options.force, options.resume) as tmp:
        journal = Journal.open(tmp, print_, resume=options.resume)
        writer = ShardWriter(tmp, layout, done=journal.done)
        try:
            with TensorReader() as reader:
                execute(plan, reader, writer, exec_options, skip=journal.done,
                        on_tensor=lambda pt: journal.record(pt.name))
            writer.finish()
        finally:
            writer.close()
            journal.close()
        journal.path.unlink()
        write_metadata(plan, tmp)


def run_merge(recipe: Path, out: Path, options: MergeOptions = MergeOptions(),
              overrides: Sequence[str] = ()) -> Plan:
    """Load, validate, plan and run a recipe file; returns the plan that was executed."""
    plan = build_plan(load_recipe(recipe, overrides))
    write_model(plan, out, options)
    return plan
