"""AdaMerging's coefficients against plain gradient descent written out here."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.func import functional_call
from torch.testing import assert_close

from mergekit_like.datamerge.adamerging import (
    TaskTensors,
    Workspace,
    coefficient_grad,
    compact,
    gradient_shares,
    mix_into,
)
from mergekit_like.soups.ingredients import checkpoint_names
from tests.datamerge.conftest import load_vit, read_output, recipe_text, val_examples

LR, STEPS = 0.5, 3


def entropy(
    model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Mean over examples of -sum_c p_c log p_c of the model with ``params`` swapped in."""
    logits = functional_call(model, params, args=(), kwargs={"pixel_values": x})[0]
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1).mean()


def descend(
    base: Path, models: list[Path], data: Path, per_tensor: bool
) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor, list[str]]:
    """lambda <- clamp(lambda - LR * dH/dlambda, 0, 1), STEPS times from 0.3, on every
    example at once (the batch covers them all; entropy is a mean, so order is moot)."""
    live = load_vit(base)
    ckpt_to_own = checkpoint_names(live)
    theta0 = {n: t.float() for n, t in load_file(base / "model.safetensors").items()}
    taus = [
        {n: load_file(m / "model.safetensors")[n].float() - t for n, t in theta0.items()}
        for m in models
    ]
    names = sorted(theta0)
    x, _ = val_examples(data)
    shape = (len(names), len(models)) if per_tensor else (len(models),)
    lam = torch.full(shape, 0.3, requires_grad=True)
    for _ in range(STEPS):
        params = {}
        for i, n in enumerate(names):
            c = lam[i] if per_tensor else lam
            params[ckpt_to_own[n]] = theta0[n] + sum(c[k] * taus[k][n] for k in range(len(models)))
        (grad,) = torch.autograd.grad(entropy(live, params, x), lam)
        lam = (lam - LR * grad).clamp(0, 1).detach().requires_grad_(True)
    lam = lam.detach()
    merged = {
        n: theta0[n]
        + sum((lam[i] if per_tensor else lam)[k] * taus[k][n] for k in range(len(models)))
        for i, n in enumerate(names)
    }
    return merged, [str(m) for m in models], lam, names


def test_task_wise_coefficients_follow_gradient_descent(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    base, models = folders[0], folders[1:]
    out = run_merge(
        recipe_text(
            "adamerging",
            models,
            data,
            f"optimizer: sgd\nlr: {LR}\nsteps: {STEPS}\nbatch_size: 8",
            base=base,
        )
    )
    merged, refs, lam, _ = descend(base, models, data, per_tensor=False)
    report = json.loads((out / "datamerge_report.json").read_text())
    got = torch.tensor([report["coefficients"][r] for r in refs])
    assert_close(got, lam, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(lam, torch.full_like(lam, 0.3))  # the steps moved them
    assert len(report["entropy_history"]) == STEPS
    assert "[`adamerging`](https://arxiv.org/abs/2310.02575)" in (out / "README.md").read_text()
    for name, tensor in read_output(out).items():
        assert_close(tensor, merged[name], rtol=1e-5, atol=1e-6, msg=name)


def test_layer_wise_coefficients_follow_gradient_descent(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    base, models = folders[0], folders[1:]
    out = run_merge(
        recipe_text(
            "adamerging",
            models,
            data,
            f"optimizer: sgd\nlr: {LR}\nsteps: {STEPS}\nbatch_size: 8\ngranularity: layer",
            base=base,
        )
    )
    merged, refs, lam, names = descend(base, models, data, per_tensor=True)
    coef = json.loads((out / "datamerge_report.json").read_text())["coefficients"]
    got = torch.tensor([[coef[n][r] for r in refs] for n in names])
    assert_close(got, lam, rtol=1e-5, atol=1e-6)
    for name, tensor in read_output(out).items():
        assert_close(tensor, merged[name], rtol=1e-5, atol=1e-6, msg=name)


def test_coefficients_are_clamped_to_0_1(vit_setup, run_merge) -> None:
    folders, data = vit_setup
    out = run_merge(
        recipe_text(
            "adamerging",
            folders[1:],
            data,
            "optimizer: sgd\nlr: 1000.0\nsteps: 2\ninit: 1.0",
            base=folders[0],
        )
    )
    coef = json.loads((out / "datamerge_report.json").read_text())["coefficients"]
    assert all(0.0 <= v <= 1.0 for v in coef.values())
    assert any(v in (0.0, 1.0) for v in coef.values())


def test_compact_holds_every_value_exactly() -> None:
    bf = torch.tensor([1.0, -0.5, 2.0**127, 2.0**-130])  # all bfloat16 values
    assert compact(bf).dtype == torch.bfloat16
    half = torch.tensor([1.0, 1.0 + 2.0**-10])  # float16 has the bit, bfloat16 not
    assert compact(half).dtype == torch.float16
    for t in (torch.tensor([1.0 + 2.0**-20]), torch.tensor([float("nan"), 1.0])):
        assert compact(t) is t
    x = torch.randn(64, 48).to(torch.bfloat16).float()
    assert torch.equal(compact(x).float(), x)


def test_mixing_is_autograd_of_the_formula_bit_for_bit() -> None:
    """Mixed values and the coefficient gradient collected from the leaves' hooks against
    autograd through ``theta_0 + tensordot(c, tau)`` with the task vectors held (one
    tensor gets no gradient)."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(7,), (33, 20), (4, 5, 6), (3,)]
    bases = [torch.randn(s, generator=gen).to(torch.bfloat16).float() for s in shapes]
    models = [
        [(b + 0.1 * torch.randn(b.shape, generator=gen)).to(torch.bfloat16).float() for b in bases]
        for _ in range(3)
    ]
    held = [
        TaskTensors(compact(b), tuple(compact(m[i]) for m in models)) for i, b in enumerate(bases)
    ]
    assert all(t.base.dtype == torch.bfloat16 for t in held)
    grads = [torch.randn(s, generator=gen) for s in shapes[:3]]  # the last gets none
    for shape in [(3,), (len(shapes), 3)]:
        coef = torch.rand(shape, generator=gen)
        c2 = coef.clone().requires_grad_(True)
        space = Workspace(held)
        leaves = [torch.zeros(s) for s in shapes]
        want = []
        for i, b in enumerate(bases):
            tau = torch.stack([m[i] - b for m in models])
            want.append(b + torch.tensordot(c2 if c2.dim() == 1 else c2[i], tau, dims=1))
        with gradient_shares(leaves, held, space) as shares:
            mix_into(leaves, held, coef, space)
            for g, w in zip(leaves, want, strict=True):
                assert torch.equal(g, w.detach())
            torch.autograd.backward(leaves[:3], grads)
            assert shares[3] is None and all(leaf.grad is None for leaf in leaves)
            got = coefficient_grad(shares, coef)
        torch.autograd.backward(want[:3], grads)
        assert torch.equal(got, c2.grad)
        assert not any(leaf.requires_grad for leaf in leaves)  # flags restored


def test_bfloat16_ingredients_follow_gradient_descent(vit_setup, run_merge, tmp_path) -> None:
    """Ingredients stored in bfloat16 (held as such while learning) give the descent's
    coefficients and merge computed in float32 from the same files."""
    from safetensors.torch import save_file

    folders, data = vit_setup
    narrow = []
    for f in folders:
        g = tmp_path / "bf16" / f.name
        g.mkdir(parents=True)
        state = load_file(f / "model.safetensors")
        save_file({n: t.to(torch.bfloat16) for n, t in state.items()}, g / "model.safetensors")
        (g / "config.json").write_text((f / "config.json").read_text())
        narrow.append(g)
    base, models = narrow[0], narrow[1:]
    options = f"optimizer: sgd\nlr: {LR}\nsteps: {STEPS}\nbatch_size: 8\ngranularity: layer"
    out = run_merge(recipe_text("adamerging", models, data, options, base=base))
    merged, refs, lam, names = descend(base, models, data, per_tensor=True)
    coef = json.loads((out / "datamerge_report.json").read_text())["coefficients"]
    assert_close(
        torch.tensor([[coef[n][r] for r in refs] for n in names]), lam, rtol=1e-5, atol=1e-6
    )
    for name, tensor in read_output(out).items():
        assert_close(tensor.float(), merged[name].to(tensor.dtype).float(), msg=name)


def test_held_on_disk_gives_the_same_bytes(vit_setup, run_merge) -> None:
    """hold: disk (every value read again at every step) learns the coefficients and
    writes the model that hold: memory does, byte for byte."""
    folders, data = vit_setup
    options = "lr: 0.05\nsteps: 3\nbatch_size: 4\ngranularity: layer"
    outs = [
        run_merge(
            recipe_text("adamerging", folders[1:], data, f"{options}\nhold: {h}", base=folders[0])
        )
        for h in ("memory", "disk")
    ]
    reports = [json.loads((o / "datamerge_report.json").read_text()) for o in outs]
    assert reports[0]["coefficients"] == reports[1]["coefficients"]
    bytes_ = [(o / "model.safetensors").read_bytes() for o in outs]
    assert bytes_[0] == bytes_[1]
