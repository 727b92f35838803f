"""Writing a plan's model: execute it into a staged folder and publish that folder at OUT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergekit_like.execute.distributed import launched_world_size, write_model_distributed
from mergekit_like.execute.journal import Journal
from mergekit_like.execute.output import check_output_path
from mergekit_like.execute.setup import MergeOptions, write_setup
from mergekit_like.execute.shards import finish_output, write_shards
from mergekit_like.execute.staging import staged_output
from mergekit_like.plan.tensors import Plan


def write_model(plan: Plan, out: Path, options: MergeOptions,
                finish: Callable[[Path], None] | None = None) -> None:
    """Execute ``plan`` and publish the output folder at ``out`` (atomically).

    ``finish(folder)`` runs on the staged folder once everything is written, before it is
    published (a failure there publishes nothing). With ``options.num_processes > 1``, or
    under torchrun / accelerate launch (WORLD_SIZE above 1), the output shards are split
    across processes (:mod:`mergekit_like.execute.distributed`); ``finish`` must then pickle.
    """
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
