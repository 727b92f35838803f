"""Compile a C file of this package into a shared library once, and load it.

The library is cached under ``$MERGEKIT_LIKE_CACHE`` (else ``$XDG_CACHE_HOME/mergekit_like``,
else ``~/.cache/mergekit_like``), named by a hash of the source and the headers beside it,
the compiler and its flags, so that an edited source or another compiler builds anew.
Builds write to a temporary file and rename it into place, so concurrent processes
(``--num-processes``) never load a half-written library. Set ``MERGEKIT_LIKE_NATIVE=0`` to
turn the C kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC", "-pthread",
         "-std=c11")
"""No contraction into fused multiply-adds (each operation rounds as torch's does); no
trapping floating point, so comparisons vectorise (the values computed are the same)."""


def compiler() -> str | None:
    """The C compiler to build with: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    named = os.environ.get("CC")
    if named:
        return shutil.which(named) or named
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("MERGEKIT_LIKE_CACHE"):
        return Path(os.environ["MERGEKIT_LIKE_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mergekit_like"


class BuildError(RuntimeError):
    """A C kernel could not be built or loaded; the message says why."""


def load(source: Path) -> ctypes.CDLL:
    """The library built from ``source`` (a C file), building it if it is not cached.

    Raises :class:`BuildError` when the kernels are turned off, no compiler is found, or the
    build fails (with the compiler's first lines of output).
    """
    if os.environ.get("MERGEKIT_LIKE_NATIVE", "1") == "0":
        raise BuildError("turned off by MERGEKIT_LIKE_NATIVE=0")
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC)")
    texts = [source.read_bytes(), *(h.read_bytes() for h in sorted(source.parent.glob("*.h")))]
    key = hashlib.sha256(b"\0".join([*texts, cc.encode(), " ".join(FLAGS).encode(),
                                     sys.platform.encode()])).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        _build(cc, source, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise BuildError(f"loading {target}: {exc}") from exc


def _build(cc: str, source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise BuildError(f"cannot write the kernel cache {target.parent}: {exc}") from exc
    try:
        done = subprocess.run([cc, *FLAGS, str(source), "-o", tmp], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()[:3]
            raise BuildError(f"{Path(cc).name} failed on {source.name}: " + " / ".join(lines))
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"building {source.name} with {cc}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
