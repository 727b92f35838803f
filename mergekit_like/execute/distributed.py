"""One merge written by several processes, each writing its own output shards.

``merge RECIPE OUT --num-processes N`` spawns N ranks (torch.multiprocessing, gloo, a local
TCP store); under torchrun or accelerate launch (``WORLD_SIZE`` set) the launcher's processes
are the ranks. Each rank writes the shards :func:`assign_shards` gives it into one staging
folder; rank 0 makes it, and once all are written, adds the index and metadata and publishes.
Tensors are computed as in one process, so the bytes are those of a single-process run, and
the resume journal is shared (``--resume`` works with any number of processes). Ranks report
through the store (:class:`Ranks`): a failing rank posts its error, the others stop after
their current tensor, rank 0 cleans up and posts the outcome, and the run fails with that one
message. The spawning process (or the launcher) watches the ranks, so none waits on a dead one.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import io
import json
import os
import pickle
import signal
import time
import traceback
import types
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.errors import Interrupted, MergeError
from mergekit_like.io.writer import ShardLayout

if TYPE_CHECKING:
    from torch.distributed import Store

    from mergekit_like.execute.setup import MergeOptions, WriteSetup
    from mergekit_like.plan.build import Plan

POLL_S = 0.02
TIMEOUT = timedelta(minutes=5)  # connecting to the store, starting the process group
GRACE_S = 120.0  # after a failure, how long the other ranks may take to stop


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun or accelerate launch; 1 when not launched."""
    size = os.environ.get("WORLD_SIZE", "1")
    return int(size) if size.isdigit() else 1


def assign_shards(layout: ShardLayout, world: int) -> tuple[tuple[int, ...], ...]:
    """The shards each rank writes: largest first, each to the rank with the fewest bytes.

    Deterministic, so every rank computes the same answer; with fewer shards than ranks,
    some ranks get none.
    """
    loads, owned = [0] * world, [[] for _ in range(world)]
    for shard in sorted(range(len(layout.files)), key=lambda s: (-layout.sizes[s], s)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owned[rank].append(shard)
        loads[rank] += layout.sizes[shard]
    return tuple(tuple(sorted(o)) for o in owned)


class PeerFailed(Exception):
    """Another rank failed; ``args[0]`` is its report."""


class PeersLost(KeyboardInterrupt):
    """The store the ranks report through is gone (the spawning process or the launcher
    died): this rank stops as if interrupted, keeping the partial output for --resume."""


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's rank and the store the ranks report through (JSON values).

    Keys: ``ready`` (rank 0 made the staging folder), ``written/R`` (rank R's shards are
    complete), ``error/R`` (rank R failed), ``failed``, ``final`` (the outcome, from rank 0).
    """

    rank: int
    world: int
    store: Store

    def has(self, *keys: str) -> bool:
        try:
            return self.store.check(list(keys))
        except RuntimeError:  # torch's DistError: the store's process is gone
            raise PeersLost from None

    def put(self, key: str, value: object) -> None:
        try:
            self.store.set(key, json.dumps(value))
        except RuntimeError:
            raise PeersLost from None

    def get(self, key: str) -> Any:
        try:
            return json.loads(self.store.get(key))
        except RuntimeError:
            raise PeersLost from None

    def first_error(self) -> dict[str, Any] | None:
        return next((self.get(f"error/{r}") for r in range(self.world)
                     if self.has(f"error/{r}")), None)

    def check_peers(self, *_: object) -> None:
        """Raise :class:`PeerFailed` once any rank has reported a failure."""
        if self.has("failed"):
            raise PeerFailed(self.first_error() or {"kind": "merge", "lines": ["failed"]})

    def wait(self, *keys: str, peers: bool = True) -> None:
        """Block until ``keys`` are posted; with ``peers``, fail as soon as a rank fails."""
        while not self.has(*keys):
            if peers:
                self.check_peers()
            time.sleep(POLL_S)

    def fail(self, report: dict[str, Any], rank: int | None = None) -> None:
        self.put(f"error/{self.rank if rank is None else rank}", report)
        self.put("failed", 1)


def report(exc: BaseException) -> dict[str, Any]:
    """An exception as a JSON-able report: its kind and one line per problem."""
    if isinstance(exc, MergeError):
        kind = "interrupted" if isinstance(exc, Interrupted) else "merge"
        return {"kind": kind, "lines": [str(p) for p in exc.problems]}
    if isinstance(exc, KeyboardInterrupt):
        return {"kind": "keyboard", "lines": ["interrupted"]}
    if isinstance(exc, OSError):
        return {"kind": "os", "errno": exc.errno, "lines": [exc.strerror or str(exc)]}
    return {"kind": "internal", "lines": [f"{type(exc).__name__}: {exc}".splitlines()[0]]}


def as_exception(rep: dict[str, Any], quiet: bool = False) -> BaseException:
    """The exception to raise for a report; ``quiet``: one the CLI prints nothing for."""
    kind, lines = rep["kind"], [] if quiet else rep["lines"]
    if kind == "keyboard" and not quiet:
        return KeyboardInterrupt()
    if kind == "os" and not quiet:
        return OSError(rep["errno"], lines[0])
    return (Interrupted if kind in ("interrupted", "keyboard") else MergeError)(lines)


def run_rank(plan: Plan, out: Path, options: MergeOptions, ranks: Ranks, local_rank: int,
             finish: Callable[[Path], None] | None = None) -> None:
    """This rank's shards; on rank 0 also the staging folder, the index, ``finish`` and
    publishing."""
    from mergekit_like.execute.journal import JOURNAL
    from mergekit_like.execute.output import check_output_path
    from mergekit_like.execute.shards import finish_output
    from mergekit_like.execute.staging import partial_dir, staged_output
    from mergekit_like.io.writer import write_index

    setup, write = _rank_writer(plan, options, ranks, local_rank)
    if ranks.rank:
        _follow(ranks, lambda: write(partial_dir(out), True))  # rank 0 started the journal
        return
    try:
        check_output_path(plan, out)
        if len(setup.layout.files) < ranks.world and not options.quiet:
            print(f"note: {len(setup.layout.files)} output shard(s) for {ranks.world} "
                  "processes; a smaller --out-shard-size keeps every process busy")
        with staged_output(out, options.force, options.resume) as tmp:
            try:
                write(tmp, options.resume)
                ranks.wait(*(f"written/{r}" for r in range(ranks.world)))
            except PeerFailed as exc:  # clean up (or keep for --resume) as for our own error
                raise as_exception(exc.args[0]) from None
            write_index(tmp, setup.layout)
            finish_output(plan, out, tmp, tmp / JOURNAL, options, finish)
    except BaseException as exc:
        if not ranks.has("failed"):
            ranks.fail(report(exc))
        ranks.put("final", report(exc))
        raise
    ranks.put("final", {"kind": "ok"})


def _rank_writer(plan: Plan, options: MergeOptions, ranks: Ranks, local_rank: int
                 ) -> tuple[WriteSetup, Callable[[Path, bool], None]]:
    """This rank's write setup (its GPU, progress on rank 0 only) and the function that
    writes its shards into a staging folder (resuming its journal or not)."""
    from mergekit_like.execute.journal import Journal
    from mergekit_like.execute.setup import write_setup
    from mergekit_like.execute.shards import write_shards

    setup = write_setup(plan, options)
    device = setup.exec_options.device
    if device.startswith("cuda"):  # one GPU per local rank
        import torch

        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    setup = dataclasses.replace(setup, exec_options=dataclasses.replace(
        setup.exec_options, device=device, progress=setup.exec_options.progress and not ranks.rank))
    mine = assign_shards(setup.layout, ranks.world)[ranks.rank]

    def write(tmp: Path, resume: bool) -> None:
        journal = Journal.open(tmp, setup.fingerprint, resume, setup.settings)
        if ranks.rank == 0:
            ranks.put("ready", 1)
        try:
            write_shards(plan, tmp, setup, journal, shards=mine, after=ranks.check_peers)
        finally:
            journal.close()
        ranks.put(f"written/{ranks.rank}", 1)

    return setup, write


def _follow(ranks: Ranks, write: Callable[[], None]) -> None:
    """A rank above 0: write once rank 0 is ready, report a failure, end as rank 0 ends."""
    try:
        ranks.wait("ready")
        write()
    except PeerFailed:
        pass
    except BaseException as exc:
        if report(exc)["kind"] == "internal":
            traceback.print_exc()
        ranks.fail(report(exc))
    ranks.wait("final", peers=False)
    if ranks.get("final")["kind"] != "ok":
        raise as_exception(ranks.get("final"), quiet=True)


def write_model_distributed(plan: Plan, out: Path, options: MergeOptions,
                            finish: Callable[[Path], None] | None = None) -> None:
    """Write ``plan`` to ``out`` with ``options.num_processes`` processes, or as a rank;
    rank 0 runs ``finish`` on the staged folder before publishing it."""
    import torch.distributed as dist

    world = launched_world_size()
    if world <= 1:
        _spawn(plan, out, options, finish)
        return
    if options.num_processes not in (1, world):
        raise MergeError(f"--num-processes {options.num_processes}: this run was started by a "
                         f"launcher with {world} processes; leave --num-processes out")
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)
    store = dist.distributed_c10d._get_default_store()
    rank = dist.get_rank()
    call = store.add(f"mergekit_like/calls/{rank}", 1)  # the same on every rank: keys per merge
    ranks = Ranks(rank, world, dist.PrefixStore(f"mergekit_like/{call}", store))
    run_rank(plan, out, options, ranks, int(os.environ.get("LOCAL_RANK", rank)), finish)


def _spawn(plan: Plan, out: Path, options: MergeOptions,
           finish: Callable[[Path], None] | None) -> None:
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    world = options.num_processes
    server = dist.TCPStore("127.0.0.1", 0, world + 1, True, timeout=TIMEOUT,
                           wait_for_workers=False)
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {**copyreg.dispatch_table,  # the plan's read-only mappings
                              types.MappingProxyType: lambda m: (_proxy, (dict(m),))}
    pickler.dump((plan, out.absolute(), options, finish))
    threads = max(1, torch.get_num_threads() // world)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(r, world, server.port, buf.getvalue(), threads))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        final = _supervise(procs, Ranks(-1, world, dist.PrefixStore("merge", server)), out)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    if final["kind"] != "ok":
        raise as_exception({**final, "kind": "merge"} if final["kind"] == "os" else final)


def _supervise(procs: list[Any], ranks: Ranks, out: Path) -> dict[str, Any]:
    """Wait for the children: the outcome rank 0 posted, or one made up when it died."""
    from multiprocessing.connection import wait

    from mergekit_like.execute.staging import partial_dir

    deadline, interrupted = None, False
    while True:
        try:
            alive = [p.sentinel for p in procs if p.is_alive()]
            for r, p in enumerate(procs):  # a rank that died without a word
                if p.exitcode in (None, 0) or ranks.has("final") or ranks.has(f"error/{r}"):
                    continue
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                stopped = interrupted or p.exitcode == 130
                what = "interrupted" if stopped else f"process {r} of {len(procs)} died ({how})"
                if r == 0:  # nobody is left to clean up or publish
                    if not ranks.has("ready"):
                        return {"kind": "keyboard" if stopped else "merge", "lines": [what]}
                    return {"kind": "interrupted" if stopped else "merge", "lines": [
                        f"{what}; the partial output is kept in {partial_dir(out)}: rerun "
                        "the same command with --resume"]}
                ranks.fail({"kind": "keyboard" if stopped else "os", "errno": None,
                            "lines": [what]}, rank=r)
            if not alive:
                break
            if deadline is None and ranks.has("failed"):
                deadline = time.monotonic() + GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                first = (ranks.first_error() or {"lines": ["interrupted"]})["lines"][0]
                return {"kind": "merge", "lines": [
                    f"{first} (the other processes did not stop in {GRACE_S:.0f} s)"]}
            wait(alive, timeout=0.1)
        except KeyboardInterrupt:  # give the children time to stop cleanly
            if interrupted:
                raise
            interrupted, deadline = True, time.monotonic() + GRACE_S
            for p in procs:  # a Ctrl-C reached them too; a SIGTERM (kill PID) did not
                if p.is_alive():
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, signal.SIGTERM)
    if ranks.has("final"):
        return ranks.get("final")
    return {"kind": "merge", "lines": ["the merge processes exited without a result"]}


def _child(rank: int, world: int, port: int, payload: bytes, threads: int) -> None:
    """A spawned rank: join the group, run :func:`run_rank`, exit with 0, 2 or 130."""
    import sys

    from mergekit_like.execute.stop import interrupt_once

    code, parent = 0, os.getppid()
    interrupt_once()
    # the store's lost connection when the spawning process dies is ours to report
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        plan, out, options, finish = pickle.loads(payload)
        store = dist.TCPStore("127.0.0.1", port, world + 1, False, timeout=TIMEOUT)
        dist.init_process_group("gloo", store=dist.PrefixStore("pg", store), rank=rank,
                                world_size=world, timeout=TIMEOUT)
        try:
            ranks = Ranks(rank, world, dist.PrefixStore("merge", store))
            run_rank(plan, out, options, ranks, rank, finish)
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    except MergeError as exc:  # the spawning process prints the message
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        if os.getppid() == parent:  # else nobody is left to read it: stop quietly
            traceback.print_exc()
        code = 2
    sys.exit(code)


def _proxy(items: dict[str, Any]) -> types.MappingProxyType[str, Any]:
    """Unpickles the plan's read-only mappings, which travel as dicts."""
    return types.MappingProxyType(items)
