"""Fuzzing: random recipes and corrupted headers never produce a traceback.

Every run either succeeds or exits with code 2 and one line per problem. Example counts are
bounded so the suite stays fast, and derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import shutil
import struct

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergekit_like.cli import main

KEYS = ["merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype",
        "tokenizer_source", "tokenizer", "chat_template", "name", "model", "layer_range",
        "sources", "weight", "density", "filter", "value", "lambda", "normalize", "t",
        "source", "tokens", "force", "pad_to_multiple_of", "kind"]
METHODS = ["linear", "ties", "task_arithmetic", "passthrough", "slerp", "dare_ties", "nope"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(METHODS + ["1e-5", "union", "base", "bfloat16", "[0, 1]"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner,
                                            max_size=5)),
    max_leaves=20)
recipes = st.fixed_dictionaries(
    {"merge_method": st.sampled_from(METHODS) | scalars},
    optional={k: values for k in KEYS[1:9]})

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(data=recipes)
def test_random_recipes_validate_or_exit_2(tmp_path, capsys, data):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    if code == 2:
        assert all(line.startswith("error: ") for line in err.strip().splitlines())


@SETTINGS
@given(text=st.text(max_size=200))
def test_random_text_is_never_a_traceback(tmp_path, capsys, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) in (0, 2)
    assert "Traceback" not in capsys.readouterr().err


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(min_value=0, max_value=400),
                                st.integers(min_value=0, max_value=255)), min_size=1, max_size=6),
       truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=600)))
def test_corrupted_headers_fail_cleanly(tmp_path_factory, capsys, llama_family, edits, truncate):
    tmp = tmp_path_factory.mktemp("corrupt")
    model = tmp / "m"
    shutil.copytree(llama_family["math"], model)
    raw = bytearray((model / "model.safetensors").read_bytes())
    (hlen,) = struct.unpack("<Q", raw[:8])
    for pos, byte in edits:  # corrupt the length field and the JSON header
        raw[min(pos, 8 + hlen - 1)] = byte
    if truncate is not None:
        raw = raw[:truncate]
    (model / "model.safetensors").write_bytes(bytes(raw))
    recipe = tmp / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {model}}}, "
                      f"{{model: {llama_family['code']}}}]\n")
    code = main([str(recipe), str(tmp / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert not (tmp / "out").exists()
        assert len(err.strip().splitlines()) >= 1
