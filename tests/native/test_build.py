"""Building and loading the C kernels: cached, rebuilt on change, and a clear error."""

from __future__ import annotations

import pytest

from mergekit_like.methods.kernels import Kernels
from mergekit_like.native import build
from mergekit_like.native.build import BuildError, load

SOURCE = "int mk_answer(void) { return 42; }\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEKIT_LIKE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


needs_cc = pytest.mark.skipif(build.compiler() is None, reason="no C compiler")


@needs_cc
def test_a_library_is_built_once_and_rebuilt_when_its_source_changes(cache, tmp_path):
    source = tmp_path / "answer.c"
    source.write_text(SOURCE)
    assert load(source).mk_answer() == 42
    built = list(cache.glob("answer-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert load(source).mk_answer() == 42
    assert built[0].stat().st_mtime_ns == stamp  # taken from the cache
    source.write_text(SOURCE.replace("42", "43"))
    assert load(source).mk_answer() == 43
    assert len(list(cache.glob("answer-*.so"))) == 2
    assert len(list(cache.iterdir())) == 2  # no temporary files left
    (tmp_path / "answer.h").write_text("#define ANSWER 44\n")  # a header beside it counts
    source.write_text('#include "answer.h"\nint mk_answer(void) { return ANSWER; }\n')
    assert load(source).mk_answer() == 44
    (tmp_path / "answer.h").write_text("#define ANSWER 45\n")
    assert load(source).mk_answer() == 45


@needs_cc
def test_a_source_that_does_not_compile_names_itself(cache, tmp_path):
    source = tmp_path / "broken.c"
    source.write_text("int mk_broken(void) { return }\n")
    with pytest.raises(BuildError, match="failed on broken.c"):
        load(source)
    assert list(cache.iterdir()) == []  # no half-built library left behind


def test_no_compiler_or_turned_off_is_a_build_error(cache, tmp_path, monkeypatch):
    source = tmp_path / "answer.c"
    source.write_text(SOURCE)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(BuildError, match="no-such-cc"):
        load(source)
    monkeypatch.setenv("MERGEKIT_LIKE_NATIVE", "0")
    with pytest.raises(BuildError, match="MERGEKIT_LIKE_NATIVE=0"):
        load(source)


def test_compiled_kernels_without_the_c_kernel_warn_once_and_go_on(cache, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("MERGEKIT_LIKE_NATIVE", "0")
    kernels = Kernels("compiled")
    assert kernels.native() is None and kernels.native() is None
    assert capsys.readouterr().err.count("warning: no C kernels") == 1
    assert Kernels("eager").native() is None
    assert capsys.readouterr().err == ""


@needs_cc
def test_compiled_kernels_take_the_c_kernels(cache):
    native = Kernels("compiled").native()
    assert native is not None and native.window.lib and native.mix.lib
