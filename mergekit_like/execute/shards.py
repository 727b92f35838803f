"""Computing a plan's shards into a folder, journaled for resume, then its metadata files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from pathlib import Path

from mergekit_like.errors import PartialKept
from mergekit_like.execute.executor import execute
from mergekit_like.execute.journal import Journal, JournalWriter
from mergekit_like.execute.output import write_metadata
from mergekit_like.execute.setup import MergeOptions, WriteSetup
from mergekit_like.execute.staging import kept_after_tensors
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import ShardWriter, intact
from mergekit_like.plan.tensors import Plan, PlannedTensor


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
