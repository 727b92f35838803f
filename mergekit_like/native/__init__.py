"""Small C kernels for the passes that torch cannot run fast on a CPU, built on first use.

Each kernel is a C file beside its Python wrapper, compiled by the system's C compiler into
a per-user cache (:mod:`.build`) and called through ``ctypes`` (which releases the GIL).
Where no compiler is found or the build fails, the wrappers report it and the callers take
their torch path instead: the results are the same, only slower.

- :mod:`.bracket`: one pass of a bracketed rank selection (counts below a magnitude, and
  the magnitudes inside a narrow bracket), for the magnitude trims' rank windows.
"""
