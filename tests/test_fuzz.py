"""Fuzzing: random recipes and corrupted headers never produce a traceback.

Every run either succeeds or exits with code 2 and one line per problem. Example counts are
bounded so the suite stays fast, and derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from pathlib import Path

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


# --- hostile inputs (issue 16): each class is fuzzed, and every outcome is counted ---------

TALLY_SETTINGS = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))


def _outcome(args: list[str], capsys) -> str:
    """'exit N' for a clean run or one-line errors, 'traceback' for anything else."""
    try:
        code = main(args)
    except BaseException as exc:  # noqa: BLE001 - counted, then the test fails on it
        capsys.readouterr()
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        return f"traceback {type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if "Traceback" in err or code not in (0, 2):
        return f"traceback exit {code}"
    if code == 2 and (not lines or not all(ln.startswith("error: ") for ln in lines)):
        return "traceback (not one line per problem)"
    return f"exit {code}"


def _check_tally(name: str, tally: Counter) -> None:
    print(f"\n{name}: {sum(tally.values())} inputs, {dict(sorted(tally.items()))}")
    bad = {k: v for k, v in tally.items() if k.startswith("traceback")}
    assert not bad, f"{name}: {bad}"


TAGS = ["", "", "", "", "!!python/name:os.system ", "!!python/object/apply:os.system ",
        "!vault ", "!!int ", "!!float ", "!!bool ", "!!str ", "!!null ", "!!binary ",
        "!!timestamp ", "!!set ", "!!omap ", "!!map ", "!!seq ", "!!merge "]
ATOMS = ["abc", "maybe", "1", "0.5", "-3", "1e999", "-.inf", ".nan", "9" * 4400,
         "1" + "0" * 400, '"\\ud800"', '"x\\udcff"', '"a\\0b"', "~no-such-user/x", "~", "null",
         "linear", "ties", "slerp", "[0, 2]", "a" * 300, '"' + "b" * 5000 + '"', "2001-12-14",
         "0x1F", "+12_000", "yes", "aGVsbG8=", "*a", "*b", "*nope", "''"]
ANCHORS = ["", "", "", "&a ", "&b "]
YAML_KEYS = [*KEYS, "<<", "<<", "? [x]", "1", "null", "'x\\ud800'"]


def _render(tree) -> str:
    kind = tree[0]
    if kind == "atom":
        _, tag, anchor, text = tree
        return f"{anchor}{tag}{text}" if not text.startswith("*") else text
    _, tag, anchor, children = tree
    if kind == "seq":
        return f"{anchor}{tag}[{', '.join(_render(c) for c in children)}]"
    return f"{anchor}{tag}{{{', '.join(f'{k}: {_render(c)}' for k, c in children)}}}"


yaml_atoms = st.tuples(st.just("atom"), st.sampled_from(TAGS), st.sampled_from(ANCHORS),
                       st.sampled_from(ATOMS))
yaml_trees = st.recursive(
    yaml_atoms,
    lambda inner: st.one_of(
        st.tuples(st.just("seq"), st.sampled_from(TAGS), st.sampled_from(ANCHORS),
                  st.lists(inner, max_size=4)),
        st.tuples(st.just("map"), st.sampled_from(TAGS), st.sampled_from(ANCHORS),
                  st.lists(st.tuples(st.sampled_from(YAML_KEYS), inner), max_size=4))),
    max_leaves=12)


@st.composite
def hostile_yaml(draw) -> str:
    top = draw(st.lists(st.tuples(st.sampled_from(KEYS[:9] + ["<<"]), yaml_trees), max_size=5))
    lines = [f"merge_method: {draw(st.sampled_from(METHODS))}"]
    lines += [f"{k}: {_render(v)}" for k, v in top]
    depth = draw(st.sampled_from([0, 0, 0, 40, 70, 300, 1200]))
    if depth:
        lines.append(f"parameters: {{x: {'[' * depth}1{']' * depth}}}")
    if draw(st.booleans()) and draw(st.booleans()):
        lines.append("---\n" + lines[0])
    return "\n".join(lines) + "\n"


def test_hostile_yaml_is_never_a_traceback(tmp_path, capsys):
    tally: Counter = Counter()
    path = tmp_path / "hostile.yaml"

    @settings(TALLY_SETTINGS, max_examples=80)
    @given(text=hostile_yaml())
    def one(text: str) -> None:
        path.write_text(text, encoding="utf-8")
        tally[_outcome(["validate", str(path)], capsys)] += 1

    one()
    _check_tally("hostile YAML recipes", tally)


OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["1e999", "nan", "-inf", "1" + "0" * 5000, "[" * 70 + "]" * 70,
                     "{a:" * 70 + "1" + "}" * 70, "${oc.env:HOME}", "int(3)", "null", "''",
                     "~no-such-user/x", "[a, {b: 1}]", "x" * 3000, "true", "linear"]),
    st.text(alphabet="ab01.[]{}:,=~+$'\" \\", max_size=20))
override_keys = st.lists(st.sampled_from(["models", "0", "1", "7", "parameters", "weight",
                                          "model", "merge_method", "slices", "x", ""]),
                         min_size=1, max_size=5).map(".".join)


def test_hostile_overrides_are_never_a_traceback(tmp_path, capsys):
    tally: Counter = Counter()
    path = tmp_path / "r.yaml"
    path.write_text("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, "
                    "{model: b}]\n")

    @TALLY_SETTINGS
    @given(ovs=st.lists(st.tuples(st.sampled_from(["", "+", "++", "~"]), override_keys,
                                  OVERRIDE_VALUES), min_size=1, max_size=3))
    def one(ovs) -> None:
        args = [f"{p}{k}" if p == "~" else f"{p}{k}={v}" for p, k, v in ovs]
        tally[_outcome(["validate", str(path), *args], capsys)] += 1

    one()
    _check_tally("hostile overrides", tally)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=6), st.sampled_from(["F32", "BF16", "I64", "F8_E4M3", "F33"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


def _split_header(raw: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + hlen]), raw[8 + hlen:]


def test_hostile_header_entries_are_never_a_traceback(tmp_path, capsys, llama_family):
    tally: Counter = Counter()
    model = tmp_path / "m"
    shutil.copytree(llama_family["math"], model)
    original = (model / "model.safetensors").read_bytes()
    header, data = _split_header(original)
    names = sorted(k for k in header if k != "__metadata__")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {model}}}, "
                      f"{{model: {llama_family['code']}}}]\n")

    @TALLY_SETTINGS
    @given(edits=st.lists(st.tuples(st.integers(0, len(names) - 1),
                                    st.sampled_from(["dtype", "shape", "data_offsets", None]),
                                    json_values), min_size=1, max_size=3),
           length_delta=st.sampled_from([0, 0, 0, -3, -1, 1, 4]))
    def one(edits, length_delta: int) -> None:
        new = json.loads(json.dumps(header))
        for i, field, value in edits:
            if field is None:
                new[names[i]] = value
            elif isinstance(new[names[i]], dict):
                new[names[i]][field] = value
        text = json.dumps(new, allow_nan=True).encode()
        (model / "model.safetensors").write_bytes(
            struct.pack("<Q", len(text) + length_delta) + text + data)
        tally[_outcome(["plan", str(recipe), "--summary"], capsys)] += 1

    one()
    _check_tally("hostile safetensors headers", tally)


def test_hostile_index_and_config_are_never_a_traceback(tmp_path, capsys, sharded_family):
    tally: Counter = Counter()
    model = tmp_path / "m"
    shutil.copytree(sharded_family["x"], model)
    index, config = model / "model.safetensors.index.json", model / "config.json"
    good_index, good_config = index.read_bytes(), config.read_bytes()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {model}}}, "
                      f"{{model: {sharded_family['y']}}}]\n")

    @TALLY_SETTINGS
    @given(target=st.sampled_from(["index", "weight_map", "shard", "config", "config-key"]),
           value=json_values, raw=st.one_of(st.none(), st.binary(max_size=30)))
    def one(target: str, value, raw: bytes | None) -> None:
        index.write_bytes(good_index)
        config.write_bytes(good_config)
        data = json.loads(good_index)
        if target == "weight_map":
            data["weight_map"] = value
        elif target == "shard":
            data["weight_map"][next(iter(data["weight_map"]))] = value
        text = json.dumps(value if target == "index" else data, allow_nan=True).encode()
        if target.startswith("config"):
            cfg = json.loads(good_config)
            cfg["num_hidden_layers" if target == "config-key" else "x"] = value
            config.write_bytes(raw if raw is not None else
                               json.dumps(value if target == "config" else cfg,
                                          allow_nan=True).encode())
        else:
            index.write_bytes(raw if raw is not None else text)
        tally[_outcome(["plan", str(recipe), "--summary"], capsys)] += 1

    one()
    _check_tally("hostile index files and config.json", tally)


def test_hostile_journal_heads_are_never_a_traceback(tmp_path, capsys, llama_family):
    tally: Counter = Counter()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels: [{{model: {llama_family['math']}}}, "
                      f"{{model: {llama_family['code']}}}]\n")
    partial = tmp_path / ".out.partial"

    @settings(TALLY_SETTINGS, max_examples=30)
    @given(head=st.one_of(st.binary(max_size=40), json_values.map(
        lambda v: json.dumps(v, allow_nan=True).encode())))
    def one(head: bytes) -> None:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        partial.mkdir()
        (partial / ".merge-journal").write_bytes(head + b'\n{"done": "lm_head.weight"}\n')
        tally[_outcome([str(recipe), str(tmp_path / "out"), "--resume", "--quiet"],
                       capsys)] += 1

    one()
    _check_tally("hostile journal heads", tally)
