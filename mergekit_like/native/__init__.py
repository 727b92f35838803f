"""Small C kernels for the passes that torch cannot run fast on a CPU, built on first use.

Each kernel is a C file beside its Python wrapper, compiled by the system's C compiler into
a per-user cache (:mod:`.build`) and called through ``ctypes`` (which releases the GIL).
Where no compiler is found or the build fails, the wrappers report it and the callers take
their torch path instead: the results are the same, only slower.

- :mod:`.window`: the magnitude trims' rank-window passes: one pass of a bracketed rank
  selection (counts below a magnitude, and the magnitudes inside a narrow bracket), and
  the entries equal to a window's boundary value (how many, and where).
- :mod:`.mix`: the merge pass of the TIES family (trim every task vector, elect the signs,
  mix), the eager torch operations in the same order, in one loop.

- ``introsort.c``: the replay of torch's CPU sort where a magnitude trim's cut falls among
  equal magnitudes (:mod:`mergekit_like.methods.introsort`, used whenever it builds).

- :mod:`.sphere`: the Karcher iteration's elementwise steps (log map accumulation, exp
  map), float32 and bfloat16, rounded as the torch operations they replace.
- :mod:`.soup`: the linear merge in one loop (float32 and bfloat16 inputs), where torch's
  ``addcmul_`` is a fused multiply-add (its AVX2 and AVX-512 CPU kernels).

``--kernels compiled`` (and ``auto`` on large merges on a CPU) uses ``window`` and ``mix``,
for float32; ``introsort``, ``sphere`` and ``soup`` run in every mode (same bytes as torch).
"""
