"""``reverse_pass.vector_jacobian``: the engine's pass without ``torch.autograd.grad``'s
argument handling, the same results, and ``torch.autograd.grad`` wherever that
handling could matter."""

import pytest
import torch

from ebmalgebra import reverse_pass
from ebmalgebra.reverse_pass import vector_jacobian


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 3, generator=generator).requires_grad_(True),
            torch.randn(5, generator=generator).requires_grad_(True))


def _no_autograd_grad(*args, **kwargs):
    raise AssertionError("torch.autograd.grad was called")


def test_plain_cpu_tensors_take_the_engine_and_get_the_closed_form(monkeypatch):
    # y_n = Σ_i x_ni² w_n, seeded with v: ∂/∂x = 2 v_n w_n x_n, ∂/∂w = v_n Σ_i x_ni².
    x, w = _inputs()
    v = torch.linspace(-1.0, 2.0, 5)
    monkeypatch.setattr(torch.autograd, "grad", _no_autograd_grad)
    y = (x * x).sum(1) * w
    grad_x, grad_w = vector_jacobian((y,), (v,), (x, w))
    torch.testing.assert_close(grad_x, 2 * (v * w)[:, None] * x)
    torch.testing.assert_close(grad_w, v * (x * x).sum(1))


def test_equals_torch_autograd_grad_bit_for_bit_with_several_outputs():
    x, w = _inputs(1)
    outputs = lambda: ((x.sin() * w[:, None]).sum(1), (x * x).sum(1).exp())  # noqa: E731
    seeds = (torch.full((5,), -1.0), torch.arange(5.0))
    expected = torch.autograd.grad(outputs(), (x, w), seeds, allow_unused=True)
    got = vector_jacobian(outputs(), seeds, (x, w))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_an_input_the_outputs_do_not_depend_on_gets_none():
    x, w = _inputs(2)
    (grad_x, grad_w) = vector_jacobian(((x * 3).sum(1),), (torch.ones(5),), (x, w))
    torch.testing.assert_close(grad_x, torch.full((5, 3), 3.0))
    assert grad_w is None


def test_create_graph_keeps_the_result_differentiable_and_otherwise_frees_the_graph():
    x, _ = _inputs(3)
    y = (x ** 3).sum(1)
    (grad,) = vector_jacobian((y,), (torch.ones(5),), (x,), create_graph=True)
    # ∂/∂x of Σ 3x² is 6x.
    (second,) = torch.autograd.grad(grad.sum(), x)
    torch.testing.assert_close(second, 6 * x.detach())
    y.sum().backward()  # the graph was kept (retain_graph defaults to create_graph)
    torch.testing.assert_close(x.grad, 3 * x.detach() ** 2)
    z = (x ** 3).sum(1)
    vector_jacobian((z,), (torch.ones(5),), (x,))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        z.sum().backward()


def test_an_input_that_does_not_require_grad_raises_as_torch_autograd_grad_does():
    x = torch.ones(2, 2)
    y = torch.ones(2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="does not require grad"):
        vector_jacobian((y,), (torch.ones(2),), (x,))


class _Recording(torch.Tensor):
    """A tensor subclass whose ``__torch_function__`` records the functions it sees."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", repr(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_go_through_torch_autograd_grad_and_its_overrides():
    x = torch.ones(3, 2).as_subclass(_Recording).requires_grad_(True)
    _Recording.seen.clear()
    y = (x * x).sum(1)
    (grad,) = vector_jacobian((y,), (torch.ones(3),), (x,))
    assert "grad" in _Recording.seen
    torch.testing.assert_close(grad.as_subclass(torch.Tensor), torch.full((3, 2), 2.0))


def test_without_the_engine_entry_point_it_falls_back_to_torch_autograd_grad(monkeypatch):
    monkeypatch.setattr(reverse_pass, "_run_backward", None)
    calls = []
    original = torch.autograd.grad

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    x, _ = _inputs(4)
    (grad,) = vector_jacobian(((x * x).sum(1),), (torch.ones(5),), (x,))
    assert calls == [1]
    torch.testing.assert_close(grad, 2 * x.detach())
