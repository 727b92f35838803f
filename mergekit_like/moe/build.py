"""Build a mixture-of-experts model from a mergekit-moe config: the story, one call a step.

Open the models (headers only), choose the output architecture, make its config, compute
the router rows, lay out every output tensor, then copy the tensors one by one into the
staging folder through the project's shard writer and publish it (a failed build leaves
nothing behind).

Example::

    build_moe(load_moe_config(Path("moe.yaml")), Path("out/moe"), MoeOptions())
"""

from __future__ import annotations

import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mergekit_like.errors import InputError, Loc, MergeError
from mergekit_like.execute.output import TOKENIZER_FILES
from mergekit_like.execute.staging import partial_dir, staged_output
from mergekit_like.io.catalog import ModelCatalog, find_local, load_catalog
from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.io.writer import ShardWriter, layout_shards
from mergekit_like.moe.arch import select_arch
from mergekit_like.moe.config import LoadedMoe, MoeExpert
from mergekit_like.moe.layout import ST_DTYPES, OutTensor, model_locs, output_config, plan_tensors
from mergekit_like.moe.routers import gate_vectors, prompt_tokenizer

CONFIG_COPY = "mergekit_moe_config.yml"


@dataclass(frozen=True)
class MoeOptions:
    """How a MoE build runs (the command line's options)."""

    device: str = "cpu"
    seed: int = 0
    out_shard_bytes: int = 5 * 10**9
    force: bool = False
    copy_tokenizer: bool = True
    write_model_card: bool = True
    trust_remote_code: bool = False
    offline: bool = False
    quiet: bool = False


def build_moe(loaded: LoadedMoe, out: Path, options: MoeOptions) -> list[OutTensor]:
    """Build the MoE of ``loaded`` into ``out``; returns the tensors written."""
    cats = open_models(loaded, options)
    locs = model_locs(loaded)
    arch = select_arch(
        loaded, [(loc, _model_type(loaded, loc, c)) for loc, c in zip(locs, cats, strict=True)]
    )
    check_out_overlap(out, cats, locs, loaded)
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(cats[0].path)
    out_dtype = loaded.config.dtype or _config_dtype(cats[0])
    out_config = output_config(
        arch, base_config, loaded, torch_dtype(out_dtype) if out_dtype else None
    )
    tokenizer = None
    if not loaded.config.random_gate:
        tokenizer = prompt_tokenizer(cats[0].path, options.trust_remote_code)
    device = (
        options.device
        if options.device != "auto"
        else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    gates = gate_vectors(loaded.config, cats[0], tokenizer, options.seed, device)
    tensors = plan_tensors(
        arch,
        out_config,
        loaded,
        cats,
        ST_DTYPES[out_dtype] if out_dtype else None,
        _TORCH_ST[gates.dtype],
    )
    with staged_output(out, options.force) as tmp:
        write_tensors(tensors, cats, gates, len(loaded.config.experts), tmp, options)
        out_config.save_pretrained(tmp)
        write_metadata(loaded, cats[0], tmp, options, arch.shown)
    if not options.quiet:
        print(
            f"wrote {out} ({arch.shown}, {len(loaded.config.experts)} experts, "
            f"{len(tensors)} tensors)",
            file=sys.stderr,
        )
    return tensors


_TORCH_ST = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
}
_TORCH_ST_INV = {v: k for k, v in _TORCH_ST.items()}


def open_models(loaded: LoadedMoe, options: MoeOptions) -> list[ModelCatalog]:
    """The catalog (headers and config) of the base, each expert and each shared expert;
    hub ids not on this machine are downloaded unless offline."""
    cfg = loaded.config
    refs = [
        cfg.base_model,
        *(e.source_model for e in cfg.experts),
        *(e.source_model for e in cfg.shared_experts or []),
    ]
    cats: dict[str, ModelCatalog] = {}
    out = []
    for loc, ref in zip(model_locs(loaded), refs, strict=True):
        if ref not in cats:
            try:
                cats[ref] = load_catalog(ref, _folder(ref, loaded.path.parent, options))
            except MergeError as exc:
                raise type(exc)([loaded.problem(loc, p.message) for p in exc.problems]) from None
        out.append(cats[ref])
    return out


def _folder(ref: str, recipe_dir: Path, options: MoeOptions) -> Path:
    found = find_local(ref, recipe_dir)
    if found is not None:
        return found
    from mergekit_like.io.hub import HubAccess, download_model

    return download_model(
        ref, HubAccess.from_env(offline=options.offline, progress=not options.quiet)
    )


def _model_type(loaded: LoadedMoe, loc: Loc, cat: ModelCatalog) -> str:
    kind = cat.config.get("model_type")
    if not isinstance(kind, str):
        raise InputError(loaded.problem(loc, f"{cat.path / 'config.json'} has no model_type"))
    return kind


def _config_dtype(cat: ModelCatalog) -> str | None:
    """The base config's dtype (``dtype`` or the older ``torch_dtype``), when it is a float."""
    value = cat.config.get("dtype") or cat.config.get("torch_dtype")
    return value if value in ST_DTYPES else None


def check_out_overlap(
    out: Path, cats: list[ModelCatalog], locs: list[Loc], loaded: LoadedMoe
) -> None:
    """Refuse an OUT that is, holds or lies inside an input model's folder."""
    targets = [out.resolve(), partial_dir(out).resolve()]
    for loc, cat in zip(locs, cats, strict=True):
        srcs = {cat.path.resolve()} | {info.file.resolve().parent for info in cat.tensors.values()}
        for src in srcs:
            for t in targets:
                if t == src or src in t.parents or t in src.parents:
                    raise MergeError(
                        loaded.problem(
                            loc,
                            f"{out}: would overwrite this model "
                            f"({src}); choose an output folder "
                            "outside every input model",
                        )
                    )


def write_tensors(
    tensors: list[OutTensor],
    cats: list[ModelCatalog],
    gates: torch.Tensor,
    n_experts: int,
    folder: Path,
    options: MoeOptions,
) -> None:
    """Copy every output tensor into sharded safetensors in ``folder``, one source tensor at
    a time (noise and residual scale applied to the experts' pieces)."""
    layout = layout_shards([(t.name, t.dtype, t.shape) for t in tensors], options.out_shard_bytes)
    writer = ShardWriter(folder, layout)
    try:
        with TensorReader() as reader:
            for t in tensors:
                dtype = _TORCH_ST_INV[t.dtype]
                if t.router is not None:
                    kind, layer = t.router
                    rows = (
                        gates[layer, :n_experts] if kind == "experts" else gates[layer, n_experts:]
                    )
                    writer.write(t.name, _checked(rows.to(dtype).contiguous(), t))
                elif t.zeros:
                    writer.write(t.name, torch.zeros(t.shape, dtype=dtype))
                else:
                    offset = 0
                    for piece in t.pieces:
                        x = reader.read(cats[piece.model].tensors[piece.name], piece.name)
                        if piece.expert is not None:
                            x = noise_and_scale(
                                x,
                                piece.expert,
                                piece.residual,
                                _noise_seed(options.seed, t.name, offset),
                            )
                        x = x.to(dtype).contiguous()
                        writer.write(t.name, x, offset)
                        offset += x.numel() * x.element_size()
        writer.finish()
    finally:
        writer.close()


def _checked(x: torch.Tensor, t: OutTensor) -> torch.Tensor:
    if tuple(x.shape) != t.shape:
        raise RuntimeError(
            f"internal error: {t.name}: shape {list(x.shape)}, planned {list(t.shape)}"
        )
    return x


def _noise_seed(seed: int, name: str, offset: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{name}@{offset}".encode())) & ((1 << 63) - 1)


def noise_and_scale(x: torch.Tensor, expert: MoeExpert, residual: bool, seed: int) -> torch.Tensor:
    """An expert's MLP tensor with its ``noise_scale`` noise added (seeded, in the tensor's
    dtype, as mergekit adds it) and, for a down_proj, times its ``residual_scale``."""
    if expert.noise_scale is not None:
        gen = torch.Generator().manual_seed(seed)
        x = x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * expert.noise_scale
    if residual and expert.residual_scale is not None:
        x = x * expert.residual_scale
    return x


def write_metadata(
    loaded: LoadedMoe, base: ModelCatalog, folder: Path, options: MoeOptions, arch: str
) -> None:
    """generation_config.json and tokenizer files copied from the base, the config as
    written (``mergekit_moe_config.yml``, as mergekit-moe keeps it) and a model card."""
    if (base.path / "generation_config.json").is_file():
        shutil.copyfile(base.path / "generation_config.json", folder / "generation_config.json")
    if options.copy_tokenizer:
        for name in TOKENIZER_FILES:
            if (base.path / name).is_file():
                shutil.copyfile(base.path / name, folder / name)
    (folder / CONFIG_COPY).write_text(loaded.text)
    if options.write_model_card:
        (folder / "README.md").write_text(model_card(loaded, arch))


def model_card(loaded: LoadedMoe, arch: str) -> str:
    """A short README.md: front matter naming the models, and the config that built it."""
    cfg = loaded.config
    experts = [e.source_model for e in cfg.experts]
    shared = [e.source_model for e in cfg.shared_experts or []]
    front: dict[str, Any] = {
        "base_model": list(dict.fromkeys([cfg.base_model, *experts, *shared])),
        "library_name": "transformers",
        "tags": ["merge", "mergekit", "moe", "mergekit_like"],
    }
    lines = [f"- `{m}`" for m in experts]
    return (
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n"
        f"# {arch} mixture of experts\n\n"
        f"Built with mergekit_like from the mergekit-moe config below: attention, "
        f"embeddings and norms from `{cfg.base_model}`, one expert per model:\n\n"
        + "\n".join(lines)
        + "\n\n"
        + (f"Shared expert: `{shared[0]}`.\n\n" if shared else "")
        + f"Router: `{cfg.gate_mode}`, {cfg.experts_per_token} experts per token.\n\n"
        "```yaml\n" + loaded.text.rstrip("\n") + "\n```\n"
    )
