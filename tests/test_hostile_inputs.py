"""Hostile inputs: each is one line naming the file and field, exit code 2, never a traceback,
never a hang, bounded memory (issue 16, points 11 and 12)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergekit_like.recipe.loading import load_recipe

BOMB = "\n".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]",
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "merge_method: linear",
        "models: [{model: m}]",
        "",
    ]
)

# (case, recipe text, what the one line must name)
RECIPES = [
    ("python-tag", "merge_method: !!python/name:os.system linear\n", "merge_method"),
    ("python-object", "merge_method: linear\nmodels: !!python/object:os.system {}\n", "models"),
    ("unknown-tag", "merge_method: linear\nmodels: [{model: !vault a}]\n", "models[0].model"),
    ("set-tag", "merge_method: linear\nmodels: !!set {a, b}\n", "models"),
    (
        "int-abc",
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: !!int abc}}]\n",
        "models[0].parameters.weight",
    ),
    (
        "int-4301-digits",
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: " + "9" * 4301 + "}}]\n",
        "models[0].parameters.weight",
    ),
    (
        "bool-maybe",
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: !!bool maybe}}]\n",
        "models[0].parameters.weight",
    ),
    (
        "float-abc",
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: !!float abc}}]\n",
        "models[0].parameters.weight",
    ),
    (
        "int-past-float",
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1" + "0" * 400 + "}}]\n",
        "models[0].parameters.weight",
    ),
    ("recursive-alias", "merge_method: linear\nmodels: &m [*m]\n", "models"),
    (
        "recursive-alias-map",
        "merge_method: linear\nmodels: &m [{model: a, parameters: *m}]\n",
        "models[0].parameters",
    ),
    ("recursive-merge-key", "merge_method: linear\nparameters: &p {<<: *p}\n", "parameters"),
    (
        "nesting-900-flow",
        "merge_method: linear\nparameters: {x: " + "[" * 900 + "]" * 900 + "}\n",
        "hostile.yaml:2: invalid YAML: nested deeper",
    ),
    (
        "nesting-900-block",
        "merge_method: linear\nparameters:\n"
        + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(900)),
        "nested deeper",
    ),
    (
        "nesting-by-aliases",
        "".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [x]\n" for i in range(300))
        + "merge_method: linear\n",
        "a",
    ),
    ("surrogate-model", 'merge_method: linear\nmodels: [{model: "a\\ud800"}]\n', "models[0].model"),
    ("surrogate-name", 'name: "x\\udcff"\nmerge_method: linear\nmodels: [{model: a}]\n', "name"),
    (
        "surrogate-key",
        'merge_method: linear\nmodels: [{model: a}]\nparameters: {"w\\ud800": 1}\n',
        "parameters",
    ),
    ("nul-model", 'merge_method: linear\nmodels: [{model: "a\\0b"}]\n', "models[0].model"),
    ("collection-key", "merge_method: linear\nparameters: {[a, b]: 1}\n", "parameters"),
    ("alias-bomb", BOMB, "aliases"),
]


@pytest.mark.parametrize(("text", "names"), [c[1:] for c in RECIPES], ids=[c[0] for c in RECIPES])
def test_hostile_recipe_is_one_line_exit_2(tmp_path, run_cli, text, names):
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for args in (["validate", path], [path, tmp_path / "out"]):
        r = run_cli(*args)
        assert r.code == 2, r
        lines = r.err.strip().splitlines()
        assert len(lines) == 1, r.err
        assert lines[0].startswith("error: hostile.yaml"), lines[0]
        assert names in lines[0], lines[0]
        assert len(lines[0]) < 400, lines[0]
    assert not (tmp_path / "out").exists()


def _limited(args: list[str], cwd: Path, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """``merge ARGS`` in a child with 2 GiB of address space and a deadline."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    return subprocess.run(
        [sys.executable, "-m", "mergekit_like", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        check=False,
        **kw,
    )


def test_alias_bomb_stops_early_with_bounded_memory(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    assert len(BOMB) < 500
    r = _limited(["validate", "bomb.yaml"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "bomb.yaml" in r.stderr and "alias" in r.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "too-large"])
def test_recipe_that_is_not_a_small_regular_file_is_refused(tmp_path, kind):
    path = tmp_path / "r.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("merge_method: linear\n" + "# padding\n" * 600_000)  # 6 MB
    r = _limited(["validate", "r.yaml"], tmp_path, timeout=20)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "r.yaml" in r.stderr, r.stderr


def test_yaml_merge_keys_work(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "merge_method: linear\n"
        "models:\n"
        "  - model: a\n"
        "    parameters: {<<: {weight: 0.5, density: 0.9}, density: 0.3}\n"
        "  - &second {model: b, parameters: {weight: 2.0}}\n"
        "  - {<<: [*second], model: c}\n"
        "parameters: {<<: [{normalize: false}, {normalize: true, int8_mask: true}]}\n"
    )
    loaded = load_recipe(path)
    models = loaded.recipe.models
    assert [m.model for m in models] == ["a", "b", "c"]
    assert loaded.raw["models"][0]["parameters"] == {"weight": 0.5, "density": 0.3}
    assert loaded.raw["models"][2] == {"model": "c", "parameters": {"weight": 2.0}}
    # explicit keys win over merged ones; the first merged mapping wins over later ones
    assert loaded.raw["parameters"] == {"normalize": False, "int8_mask": True}
    assert loaded.lines[("models", 0, "parameters", "density")] == 4
    assert loaded.lines[("models", 2, "model")] == 6


def test_over_long_paths_and_unknown_users_are_one_line(tmp_path, run_cli):
    for ref, field in (
        ("a" * 5000, "model"),
        ("/" + ("b" * 300 + "/") * 3, "model"),
        ("~no-such-user-3141/m", "~no-such-user-3141"),
    ):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": ref}]}))
        for args in (["validate", path], ["plan", path], [path, tmp_path / "out"]):
            r = run_cli(*args)
            lines = r.err.strip().splitlines()
            if args[0] == "validate" and r.code == 0:  # "not checked, as 1 model(s) ..."
                assert all(len(line) < 400 for line in r.out.splitlines()), r.out
                assert "not reachable" in r.out and not r.err, r
                continue
            assert r.code == 2 and len(lines) == 1, r
            assert field in lines[0] and len(lines[0]) < 400, lines[0]


# --- ingredient files -------------------------------------------------------------------


@pytest.fixture
def copy_model(tmp_path, llama_family):
    """A private copy of llama_family's math model and a recipe merging it with code."""

    def make(name: str = "m") -> tuple[Path, Path]:
        model = tmp_path / name
        shutil.copytree(llama_family["math"], model)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(
            f"merge_method: linear\nmodels: [{{model: {model}}}, "
            f"{{model: {llama_family['code']}}}]\n"
        )
        return model, recipe

    return make


def _rewrite_header(file: Path, edit) -> None:
    raw = file.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    header.pop("__metadata__", None)  # room for the edit
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= hlen, "keep the header short enough to pad"
    file.write_bytes(raw[:8] + text + b" " * (hlen - len(text)) + raw[8 + hlen :])


def _first(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


HEADER_EDITS = {
    "dtype-list": lambda h: _first(h).update(dtype=["F32"]),
    "dtype-number": lambda h: _first(h).update(dtype=4),
    "shape-infinity": lambda h: _first(h).update(shape=[float("inf"), 2]),
    "shape-nan": lambda h: _first(h).update(shape=[float("nan")]),
    "shape-float": lambda h: _first(h).update(shape=[s + 0.5 for s in _first(h)["shape"]]),
    "shape-bool": lambda h: _first(h).update(shape=[True] * len(_first(h)["shape"])),
    "offsets-infinity": lambda h: _first(h).update(data_offsets=[0, float("inf")]),
    "offsets-huge": lambda h: _first(h).update(data_offsets=[0, 987654321987]),
    "entry-list": lambda h: h.update({sorted(h)[0]: [1, 2]}),
}


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=list(HEADER_EDITS))
def test_hostile_safetensors_header_is_one_line(copy_model, run_cli, edit):
    model, recipe = copy_model()
    file = model / "model.safetensors"
    if edit == "offsets-huge":  # too long to pad in place: write a fresh header
        raw = file.read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + hlen])
        HEADER_EDITS[edit](header)
        text = json.dumps(header, separators=(",", ":")).encode()
        text = text.replace(b"987654321987", b"1" + b"0" * 5000)  # past int()'s digit limit
        file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + hlen :])
    else:
        _rewrite_header(file, HEADER_EDITS[edit])
    r = run_cli("plan", recipe, "--summary")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0], r.err
    assert len(lines[0]) < 400


def test_fifo_as_a_safetensors_file_is_refused(tmp_path, llama_family):
    model = tmp_path / "m"
    shutil.copytree(llama_family["math"], model)
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    (tmp_path / "r.yaml").write_text(
        f"merge_method: linear\nmodels: [{{model: {model}}}, {{model: {llama_family['code']}}}]\n"
    )
    r = _limited(["plan", "r.yaml"], tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "model.safetensors" in r.stderr, r.stderr


INDEX_EDITS = {
    "shard-number": lambda wm: {k: 7 for k in wm},
    "shard-nul": lambda wm: {k: "model-0000\x001.safetensors" for k in wm},
    "shard-null": lambda wm: {k: None for k in wm},
    "shard-list": lambda wm: {k: ["a"] for k in wm},
    "weight-map-list": lambda wm: list(wm.values()),
    "weight-map-string": lambda wm: "model.safetensors",
    "shard-too-long": lambda wm: {k: "x" * 5000 for k in wm},
}


@pytest.mark.parametrize("edit", [*INDEX_EDITS, "not-utf8", "not-an-object"])
def test_hostile_index_file_is_one_line(tmp_path, sharded_family, run_cli, edit):
    model = tmp_path / "m"
    shutil.copytree(sharded_family["x"], model)
    index = model / "model.safetensors.index.json"
    if edit == "not-utf8":
        index.write_bytes(b'{"weight_map": {"a": "\xff\xfe.safetensors"}}')
    elif edit == "not-an-object":
        index.write_text("[1, 2]")
    else:
        data = json.loads(index.read_text())
        data["weight_map"] = INDEX_EDITS[edit](data["weight_map"])
        index.write_text(json.dumps(data))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {model}}}, {{model: {sharded_family['y']}}}]\n"
    )
    r = run_cli("plan", recipe, "--summary")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors.index.json" in lines[0], r.err
    assert len(lines[0]) < 400, lines[0]


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b"null", b'"llama"', b"3", b'{"model_type": "\xff\xfe"}', b"{" * 100_000],
    ids=["list", "null", "string", "number", "not-utf8", "deep"],
)
def test_hostile_config_json_is_one_line(copy_model, run_cli, content):
    model, recipe = copy_model()
    (model / "config.json").write_bytes(content)
    r = run_cli("plan", recipe, "--summary")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "config.json" in lines[0], r.err


def test_pickled_checkpoint_with_non_string_keys_is_one_line(
    tmp_path, bin_model, llama_family, run_cli
):
    import torch

    model = tmp_path / "binkeys"
    shutil.copytree(bin_model, model)
    state = torch.load(model / "pytorch_model.bin", weights_only=True)
    state[7] = torch.zeros(2)
    state[("a", 1)] = torch.zeros(2)
    torch.save(state, model / "pytorch_model.bin")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {model}}}, {{model: {llama_family['code']}}}]\n"
    )
    r = run_cli("plan", recipe, "--summary")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "pytorch_model.bin" in lines[0] and "7" in lines[0], r.err


@pytest.mark.parametrize(
    "head",
    [
        b"\xff\xfe\x00garbage\n",
        b"[1, 2]\n",
        b'"x"\n',
        b'{"fingerprint": ' + b"[" * 5000 + b"\n",
        b"\n",
    ],
    ids=["bytes", "list", "string", "deep", "empty-line"],
)
def test_damaged_journal_head_is_one_line(tmp_path, llama_family, run_cli, head):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {llama_family['math']}}}, "
        f"{{model: {llama_family['code']}}}]\n"
    )
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / ".merge-journal").write_bytes(head + b'{"done": "lm_head.weight"}\n')
    r = run_cli(recipe, tmp_path / "out", "--resume", "--quiet")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and ".out.partial" in lines[0] and "--force" in lines[0], r.err
    assert not (tmp_path / "out").exists()


def test_evaluation_npz_holding_pickled_objects_is_refused(tmp_path):
    import numpy as np

    from mergekit_like.errors import InputError
    from mergekit_like.recipe.soups import EvaluationConfig
    from mergekit_like.soups.data import load_split

    path = tmp_path / "data.npz"
    np.savez(path, val_inputs=np.array([{"x": 1}, None], dtype=object), val_labels=np.array([0, 1]))
    cfg = EvaluationConfig(task="classification", data=str(path))
    with pytest.raises(InputError) as err:
        load_split(cfg, "val", tmp_path, "pixel_values", None)
    assert "data.npz" in str(err.value) and "evaluation.data" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    cfg = EvaluationConfig(task="classification", data=str(tmp_path / "bad.npz"))
    with pytest.raises(InputError, match="bad.npz"):
        load_split(cfg, "val", tmp_path, "pixel_values", None)


# --- the output folder ------------------------------------------------------------------


@pytest.fixture
def linear_recipe(tmp_path, llama_family) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {llama_family['math']}}}, "
        f"{{model: {llama_family['code']}}}]\n"
    )
    return recipe


def _one_line(r, *names: str) -> str:
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_out_under_a_file_is_one_line(tmp_path, linear_recipe, run_cli):
    (tmp_path / "file").write_text("x")
    _one_line(run_cli(linear_recipe, tmp_path / "file" / "out", "--quiet"), "file")
    _one_line(run_cli(linear_recipe, tmp_path / "file" / "a" / "out", "--quiet"), "file")
    assert (tmp_path / "file").read_text() == "x"


def test_out_in_a_folder_that_cannot_be_written_is_one_line(tmp_path, linear_recipe, run_cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_cli(linear_recipe, ro / "out", "--quiet")
        if os.geteuid() != 0:  # root writes anyway
            _one_line(r, "ro")
    finally:
        ro.chmod(0o755)
    if Path("/sys").is_dir():  # where even root may not create a folder
        _one_line(run_cli(linear_recipe, "/sys/mergekit-like-out", "--quiet"), "/sys")


def test_out_name_of_255_characters_is_one_line(tmp_path, linear_recipe, run_cli):
    line = _one_line(run_cli(linear_recipe, tmp_path / ("o" * 255), "--quiet"), "OUT")
    assert len(line) < 400
    assert list(tmp_path.iterdir()) == [linear_recipe]


def test_out_a_symlink_with_force_is_refused_and_its_target_kept(tmp_path, linear_recipe, run_cli):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (tmp_path / "out").symlink_to(target)
    _one_line(run_cli(linear_recipe, tmp_path / "out", "--force", "--quiet"), "out", "link")
    assert (tmp_path / "out").is_symlink() and (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml", "target"]


def test_broken_pipe_is_not_a_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergekit_like", "methods"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like `merge methods | head` after head has exited
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert err == "", err
    assert code in (0, 141)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("models.0.parameters.weight=1" + "0" * 5000, "bad override"),
        ("models.0.parameters.weight=" + "{a:" * 300 + "1" + "}" * 300, "nested deeper"),
        ("models.0.parameters.weight=" + "[" * 300 + "]" * 300, "nested deeper"),
        ("models.0.model.x=1", "models[0].model: not a mapping or list"),
        ("models.0.parameters.weight=1" + "0" * 400, "models[0].parameters.weight"),
    ],
    ids=["digits", "deep-dict", "deep-list", "into-a-string", "int-past-float"],
)
def test_hostile_override_is_one_line(tmp_path, run_cli, override, names):
    path = tmp_path / "r.yaml"
    path.write_text("merge_method: linear\nmodels: [{model: a}, {model: b}]\n")
    r = run_cli("validate", path, override)
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: command line: "), r.err
    assert names in lines[0] and len(lines[0]) < 400, lines[0]


@pytest.mark.parametrize("content", [b'{"chat_template": "\xff\xfe"}', b"[1, 2]", b"null"])
def test_unreadable_tokenizer_config_is_skipped_by_chat_template_auto(copy_model, run_cli, content):
    model, recipe = copy_model()
    (model / "tokenizer_config.json").write_bytes(content)
    recipe.write_text(recipe.read_text() + "chat_template: auto\n")
    r = run_cli("plan", recipe, "--summary")
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
