"""The merge, start to end: load the recipe, plan it, execute into a staged folder, publish.

This is the library API behind ``merge RECIPE OUT``::

    from mergekit_like.run import MergeOptions, run_merge
    run_merge(Path("recipes/linear.yaml"), Path("out"), MergeOptions(device="cpu"))
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mergekit_like.device import resolve_device
from mergekit_like.errors import MergeError, PartialKept
from mergekit_like.execute import DEFAULT_CHUNK_BYTES, ExecOptions, execute
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import ShardLayout, ShardWriter, intact, layout_shards
from mergekit_like.journal import Journal, JournalWriter, fingerprint
from mergekit_like.loader import load_recipe
from mergekit_like.output import check_output_path, resolved_recipe_yaml, write_metadata
from mergekit_like.plan import Plan, PlannedTensor, build_plan
from mergekit_like.staging import kept_after_tensors, staged_output

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
    num_processes: int = 1
    kernels: Literal["auto", "eager", "compiled"] = "auto"
    max_gpu_bytes: int | None = None
    allow_crimes: bool = False  # merge ingredients of different architectures
    copy_tokenizer: bool = True  # False: no tokenizer files unless the recipe sets them
    write_model_card: bool = True  # False: no README.md
    #: the command line that started the run, recorded in the model card (not in the bytes)
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class WriteSetup:
    """What decides the output bytes: the shard layout, the executor options, and their
    fingerprint (the first line of the resume journal, with the named ``settings`` behind
    it, so a refused resume can say what differs)."""

    layout: ShardLayout
    exec_options: ExecOptions
    fingerprint: str
    settings: Mapping[str, Any] = field(default_factory=dict)


def write_setup(plan: Plan, options: MergeOptions) -> WriteSetup:
    """The shard layout, executor options and journal fingerprint of writing ``plan``.

    The fingerprint names the device kind (cuda, not cuda:1), so every rank of a
    distributed run shares it.
    """
    device = resolve_device(options.device)
    if options.kernels == "compiled" and not device.startswith("cpu"):
        raise MergeError(f"--kernels compiled: runs on the CPU only, not {device} (on a GPU, "
                         "triton's fused kernels do not give the eager bytes); use auto or eager")
    layout = layout_shards([(t.name, t.dtype, t.shape) for t in plan.tensors],
                           options.out_shard_bytes)
    exec_options = ExecOptions(device=device, seed=options.seed,
                               allow_nonfinite=options.allow_nonfinite,
                               chunk_bytes=options.chunk_bytes, progress=not options.quiet,
                               kernels=options.kernels, max_device_bytes=options.max_gpu_bytes)
    print_ = fingerprint(resolved_recipe_yaml(plan), *layout.headers, repr(layout.files),
                         str(options.seed), plan.compute_dtype, device.split(":")[0])
    settings = {"recipe": plan.recipe.recipe.model_dump(mode="json", by_alias=True,
                                                        exclude_none=True),
                "--seed": options.seed,
                "--out-shard-size": f"{options.out_shard_bytes} bytes",
                "--device": device.split(":")[0]}
    return WriteSetup(layout, exec_options, print_, settings)


def write_shards(plan: Plan, folder: Path, setup: WriteSetup, journal: Journal,
                 shards: Collection[int] | None = None,
                 after: Callable[[PlannedTensor], None] | None = None) -> None:
    """Compute the tensors of ``shards`` (default all) that ``journal`` lacks into
    ``folder``, record each in ``journal`` and then call ``after``; check they are complete.

    A journaled tensor is kept only if its bytes still have the journaled checksum.
    """
    slots = setup.layout.slots
    mine = set(range(len(setup.layout.files)) if shards is None else shards)
    journaled = {n: c for n, c in journal.sums.items() if n in slots and slots[n].shard in mine}
    done = intact(folder, setup.layout, journaled)
    if len(done) < len(journaled) and setup.exec_options.progress:
        print(f"note: {len(journaled) - len(done)} journaled tensor(s) of {folder} lost their "
              "bytes (their checksums differ); computing them again", file=sys.stderr)
    # skip rather than a cut-down plan: whole-model statistics (model_wide_trim) see it all
    skip = frozenset(t.name for t in plan.tensors
                     if slots[t.name].shard not in mine or t.name in done)
    writer = ShardWriter(folder, setup.layout, done=done, shards=shards)
    lines = JournalWriter(journal)

    def on_tensor(pt: PlannedTensor) -> None:
        lines.add(pt.name, *writer.checksum(pt.name))
        if after is not None:
            after(pt)

    try:
        with TensorReader() as reader:
            execute(plan, reader, writer, setup.exec_options, on_tensor=on_tensor, skip=skip)
        lines.close()
        writer.finish()
    finally:
        lines.close(check=False)
        writer.close()


def finish_output(plan: Plan, out: Path, tmp: Path, journal: Path, options: MergeOptions,
                  finish: Callable[[Path], None] | None = None) -> None:
    """After every tensor is in ``tmp``: the metadata files, then ``finish(tmp)`` (an
    evaluation), then the journal goes. A failure keeps the tensors for ``--resume``."""
    try:
        write_metadata(plan, tmp, options.seed, options.command, options.copy_tokenizer,
                       options.write_model_card)
        if finish is not None:
            finish(tmp)
    except PartialKept:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure keeps the finished tensors
        raise kept_after_tensors(exc, out, tmp) from exc
    journal.unlink()


def write_model(plan: Plan, out: Path, options: MergeOptions,
                finish: Callable[[Path], None] | None = None) -> None:
    """Execute ``plan`` and publish the output folder at ``out`` (atomically).

    ``finish(folder)`` runs on the staged folder once everything is written, before it is
    published (a failure there publishes nothing). With ``options.num_processes > 1``, or
    under torchrun / accelerate launch (WORLD_SIZE above 1), the output shards are split
    across processes (:mod:`mergekit_like.distributed`); ``finish`` must then pickle.
    """
    from mergekit_like.distributed import launched_world_size, write_model_distributed

    if options.num_processes > 1 or launched_world_size() > 1:
        write_model_distributed(plan, out, options, finish)
        return
    check_output_path(plan, out)
    setup = write_setup(plan, options)
    with staged_output(out, options.force, options.resume) as tmp:
        journal = Journal.open(tmp, setup.fingerprint, options.resume, setup.settings)
        try:
            write_shards(plan, tmp, setup, journal)
        finally:
            journal.close()
        finish_output(plan, out, tmp, journal.path, options, finish)


def run_merge(recipe: Path, out: Path, options: MergeOptions = MergeOptions(),
              overrides: Sequence[str] = ()) -> Plan:
    """Load, validate, plan and run a recipe file; returns the plan that was executed."""
    plan = build_plan(load_recipe(recipe, overrides), allow_crimes=options.allow_crimes)
    write_model(plan, out, options)
    return plan
