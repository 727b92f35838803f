"""What a merge run writes with: its options, the shard layout, and the journal fingerprint.

:class:`MergeOptions` are the command line's flags; :func:`write_setup` turns them and a plan
into what decides the output bytes (:class:`WriteSetup`), shared by every process of a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mergekit_like.errors import MergeError
from mergekit_like.execute.device import resolve_device
from mergekit_like.execute.executor import ExecOptions
from mergekit_like.execute.journal import fingerprint
from mergekit_like.execute.output import resolved_recipe_yaml
from mergekit_like.execute.steps import DEFAULT_CHUNK_BYTES
from mergekit_like.io.writer import ShardLayout, layout_shards
from mergekit_like.plan.tensors import Plan

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
