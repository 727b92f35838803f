"""task_arithmetic and the shared generalized_task_arithmetic, against written-out formulas."""

from __future__ import annotations

import torch

from mergekit_like.methods import REGISTRY, TensorContext
from mergekit_like.methods.task_arithmetic import energy_weights, generalized_task_arithmetic


def merge(method: str, tensors, base, model_params, params=None, name="t", seed=0):
    m = REGISTRY[method]
    mp = [m.model_params.model_validate(p) for p in model_params]
    return m.merge(tensors, base, mp, m.params.model_validate(params or {}),
                   TensorContext(name, seed))


BASE = torch.tensor([1.0, -1.0, 0.5, 2.0])
A = torch.tensor([2.0, -1.5, 0.5, 1.0])   # delta [1, -0.5, 0, -1]
B = torch.tensor([0.0, 1.0, 1.5, 2.5])    # delta [-1, 2, 1, 0.5]


def test_task_arithmetic_weighted_sum_scaled_by_lambda():
    out = merge("task_arithmetic", [A, B], BASE, [{"weight": 0.5}, {"weight": 2.0}],
                {"lambda": 0.8})
    mixed = 0.5 * torch.tensor([1.0, -0.5, 0, -1]) + 2.0 * torch.tensor([-1.0, 2, 1, 0.5])
    torch.testing.assert_close(out, BASE + 0.8 * mixed)


def test_task_arithmetic_normalize_divides_by_weight_sum():
    out = merge("task_arithmetic", [A, B], BASE, [{"weight": 0.5}, {"weight": 2.0}],
                {"normalize": True})
    mixed = 0.5 * torch.tensor([1.0, -0.5, 0, -1]) + 2.0 * torch.tensor([-1.0, 2, 1, 0.5])
    torch.testing.assert_close(out, BASE + mixed / 2.5)


def test_task_arithmetic_negative_weight_subtracts_and_rescale_has_no_effect():
    out = merge("task_arithmetic", [A], BASE, [{"weight": -1.0}], {"rescale": True,
                                                                   "int8_mask": True})
    torch.testing.assert_close(out, BASE - (A - BASE))


def test_inputs_are_not_modified():
    a, b, base = A.clone(), B.clone(), BASE.clone()
    merge("ties", [a, b], base, [{"density": 0.5}, {"density": 0.5}])
    assert torch.equal(a, A) and torch.equal(b, B) and torch.equal(base, BASE)


def test_count_consensus_elects_the_majority_sign():
    base = torch.zeros(3)
    xs = [torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, -1.0, -1.0]),
          torch.tensor([-9.0, 3.0, -1.0])]
    out = generalized_task_arithmetic(xs, base, [1.0, 1.0, 1.0], consensus="count",
                                      normalize=True)
    # signs (+,+,-) -> +: 1,1 kept; (-,-,+) -> -: -1,-1; (+,-,-) -> -: -1,-1
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, -1.0]))
    summed = generalized_task_arithmetic(xs, base, [1.0, 1.0, 1.0], consensus="sum")
    # sums -7, 1, 0 -> signs -, +, + (ties go to +): -9 | 3 | 2
    torch.testing.assert_close(summed, torch.tensor([-9.0, 3.0, 2.0]))


def test_lambda_may_be_a_tensor():
    out = generalized_task_arithmetic([A], BASE, [1.0], lambda_=torch.tensor([0.0, 1, 2, 3]))
    torch.testing.assert_close(out, BASE + torch.tensor([0.0, 1, 2, 3]) * (A - BASE))


def test_energy_weights():
    ws = energy_weights([torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0]), torch.zeros(2)])
    torch.testing.assert_close(torch.tensor(ws), torch.tensor([1 / 3, 2 / 3, 0.0]))
    assert energy_weights([torch.zeros(2), torch.zeros(2)]) == [0.5, 0.5]
