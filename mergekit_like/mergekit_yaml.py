"""The ``mergekit-yaml`` command: mergekit's command line, running the same merge as ``merge``.

    mergekit-yaml CONFIG_FILE OUT_PATH [mergekit's options]

A thin adapter: it reads mergekit 0.1.5's options (names, ``--x/--no-x`` pairs and
defaults as mergekit's ``MergeOptions`` has them) and runs ``merge CONFIG_FILE OUT_PATH``
with the matching flags, so both commands write the same bytes. Options that change what
mergekit writes are mapped (``--cuda``, ``--device``, ``--allow-crimes``,
``--copy-tokenizer``, ``--write-model-card``, ``--random-seed``, ``--out-shard-size``,
``--quiet``, ``-j/--num-threads``, ``--transformers-cache``); options about how mergekit
schedules its work (``--lazy-unpickle``, ``--low-cpu-memory``, ...) are accepted with a
one-line note that they are not needed here. ``--out-shard-size`` reads sizes as mergekit
does: ``5B`` is five billion bytes, ``500M`` five hundred million. ``--force`` (ours)
replaces an existing OUT_PATH.

Bad options are one line on stderr and exit code 2, as for ``merge``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from mergekit_like.errors import MergeError

NOT_NEEDED = {
    "lazy_unpickle": "tensors are read lazily, a chunk at a time",
    "low_cpu_memory": "memory is bounded by --chunk-size, not by the model",
    "read_to_gpu": "with --cuda, inputs are staged to the GPU as they are read",
    "multi_gpu": "one device per process; use `merge --num-processes N` or torchrun",
    "clone_tensors": "every output tensor is written from its own buffer",
    "async_write": "output shards are always written on a thread of their own",
    "lora_merge_cache": "adapters are applied while streaming, with nothing cached",
    "lora_merge_dtype": "adapters are applied while streaming, in the compute dtype",
    "verbosity": "progress goes to stderr; --quiet turns it off",
}
"""mergekit options with no effect here, and why (the one-line note when one is given)."""

BOOLS = {  # mergekit's boolean options (``--x/--no-x``) and their defaults
    "allow_crimes": False,
    "unsafe_truncate_embeddings": False,
    "cuda": False,
    "low_cpu_memory": False,
    "copy_tokenizer": True,
    "clone_tensors": False,
    "trust_remote_code": False,
    "lazy_unpickle": False,
    "write_model_card": True,
    "safe_serialization": True,
    "quiet": False,
    "read_to_gpu": False,
    "multi_gpu": False,
    "async_write": False,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise MergeError(f"mergekit-yaml: {message} (see mergekit-yaml --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mergekit-yaml",
        allow_abbrev=False,
        description="Run a mergekit recipe with mergekit's options (same merge as "
        "`merge CONFIG_FILE OUT_PATH`).",
    )
    p.add_argument("config_file", help="the recipe YAML file")
    p.add_argument("out_path", help="output folder")
    for name, default in BOOLS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default
        )
    for name in ("transformers_cache", "lora_merge_cache", "lora_merge_dtype", "device"):
        p.add_argument(f"--{name.replace('_', '-')}", default=None)
    p.add_argument(
        "--out-shard-size",
        default="5B",
        help="largest output shard; 5B = five billion bytes (default), 500M, 2GiB",
    )
    p.add_argument("--random-seed", type=int, default=None, help="seed of random methods")
    p.add_argument("-j", "--num-threads", type=int, default=None, help="CPU threads")
    p.add_argument("--write-threads", type=int, default=1)
    p.add_argument("-v", dest="verbosity", action="count", default=0)
    p.add_argument(
        "--gpu-rich",
        action="store_true",
        help="mergekit's alias for --cuda --low-cpu-memory --read-to-gpu --multi-gpu",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT_PATH (ours)")
    return p


def merge_argv(ns: argparse.Namespace) -> list[str]:
    """The ``merge`` command line that runs what ``mergekit-yaml`` was asked for."""
    from mergekit_like.io.writer import parse_size

    if ns.unsafe_truncate_embeddings:
        raise MergeError(
            "--unsafe-truncate-embeddings: not supported; set tokenizer_source "
            "(union, base or a model) to merge different vocabularies by token"
        )
    device = ns.device or ("cuda" if ns.cuda or ns.gpu_rich else "cpu")
    if device not in ("cpu", "cuda", "auto"):
        raise MergeError(f"--device: expected cpu, cuda or auto, got {device!r}")
    try:
        shard = parse_size(ns.out_shard_size)
    except ValueError as exc:
        raise MergeError(f"--out-shard-size: {exc}") from None
    from mergekit_like.cli import SUBCOMMANDS

    recipe = f"./{ns.config_file}" if ns.config_file in SUBCOMMANDS else ns.config_file
    argv = [recipe, ns.out_path, "--device", device, "--out-shard-size", str(shard)]
    if ns.random_seed is not None:
        argv += ["--seed", str(ns.random_seed)]
    flags = {
        "--allow-crimes": ns.allow_crimes,
        "--no-copy-tokenizer": not ns.copy_tokenizer,
        "--no-model-card": not ns.write_model_card,
        "--quiet": ns.quiet,
        "--force": ns.force,
        "--trust-remote-code": ns.trust_remote_code,
    }
    return argv + [flag for flag, on in flags.items() if on]


def notes(ns: argparse.Namespace) -> list[str]:
    """One line for each given option that has no effect here."""
    given = [
        name for name in NOT_NEEDED if getattr(ns, name) not in (None, False, 0, BOOLS.get(name))
    ]
    out = [
        f"note: --{n.replace('_', '-')} is not needed here ({NOT_NEEDED[n]}); ignored"
        for n in given
    ]
    if ns.gpu_rich:
        out.append("note: --gpu-rich: runs as --cuda (the rest is not needed here)")
    if ns.write_threads != 1:
        out.append("note: --write-threads is not needed here (one writer thread); ignored")
    if not ns.safe_serialization:
        out.append("note: --no-safe-serialization: the output is always safetensors")
    return out


def _apply_globals(ns: argparse.Namespace) -> None:
    """Process-wide settings: the hub cache folder and the number of CPU threads."""
    if ns.transformers_cache:
        os.environ["HF_HUB_CACHE"] = ns.transformers_cache
    if ns.num_threads is not None:
        if ns.num_threads < 1:
            raise MergeError(f"--num-threads: expected 1 or more, got {ns.num_threads}")
        import torch

        torch.set_num_threads(ns.num_threads)
        try:
            torch.set_num_interop_threads(ns.num_threads)
        except RuntimeError:  # already set once in this process
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mergekit-yaml`` console script; returns the exit code."""
    from mergekit_like.cli import main as merge_main

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = _parser().parse_args(args)
        command = merge_argv(ns)
        _apply_globals(ns)
    except MergeError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return exc.exit_code
    for line in notes(ns):
        print(line, file=sys.stderr)
    return merge_main(command)


if __name__ == "__main__":
    sys.exit(main())
