"""Classifier guidance: a classifier's log-probability of a label as an energy.

A classifier with logits f(x) defines p(y | x) = softmax(f(x))_y, and

    E_y(x) = −log p(y | x) = logsumexp_k f_k(x) − f_y(x)

is an energy in x like any other. Guidance is then a product of experts,

    prior & ClassifierEnergy(clf, y) ** γ   ∝   p(x) · p(y | x)^γ,

the posterior p(x | y) at γ = 1 and a sharper "guided" density for γ > 1
(Dhariwal & Nichol 2021 call γ the guidance scale).

**Noise levels.** A noise-conditioned prior E(x, t) is sampled by annealed
Langevin dynamics through the smoothed densities p_t(x). The matching
guidance term is log p_t(y | x_t), the probability of the label given the
*noisy* image, so the classifier must see noisy images in training and take t
as an input: the product p_t(x) p_t(y | x) ∝ p_t(x | y) is then exactly the
smoothed posterior at every level. A classifier trained on clean images only
is asked about noise it never saw at high t (its gradients there are
arbitrary), which is why :class:`MLPClassifier` has a ``noise_conditioned``
option and the shipped ``glasses_classifier`` uses it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmalgebra import validation
from ebmalgebra.base import Capabilities, TimeLike, input_options
from ebmalgebra.errors import ArgumentError, CompositionError
from ebmalgebra.io import register_leaf, register_module
from ebmalgebra.leaves import Leaf, as_event_shape, call_leaf_function

__all__ = ["ClassifierEnergy", "MLPClassifier"]


@register_leaf("classifier_energy")
class ClassifierEnergy(Leaf):
    """E(x) = −log softmax(classifier(x))[label], the energy of p(label | x).

    Score by autograd. ``x`` is ``(batch, *event_shape)``, the classifier
    returns logits ``(batch, n_classes)`` (it is called as
    ``classifier(x, t)`` when noise-conditioned), energies are ``(batch,)``.
    E ≥ 0, and E → 0 where the classifier is sure of ``label``. The
    normaliser ∫ p(label | x) dx is unknown (usually infinite), so use it in
    products with a prior: ``face & ClassifierEnergy(clf, 1) ** 2``.

    Args:
        classifier: an ``nn.Module`` (its parameters become the leaf's) or a
            callable returning logits.
        label: the class index y, 0 ≤ y < n_classes.
        event_shape: shape of x; default ``classifier.event_shape``.
        noise_conditioned: call ``classifier(x, t)``; default
            ``classifier.noise_conditioned`` (False if absent).
        name: printed by ``repr``; default ``classifier_<label>``.

    Raises:
        CompositionError: no event shape, a label that is not an int in
            range, or a classifier whose output is not ``(batch, n_classes)``.

    Example:
        >>> wears_glasses = ClassifierEnergy(glasses_classifier, 1, name="wears_glasses")
        >>> guided = face & wears_glasses ** 3
        >>> guided
        face & wears_glasses ** 3
    """

    def __init__(
        self,
        classifier: nn.Module | Callable[..., Tensor],
        label: int,
        *,
        event_shape: int | Sequence[int] | None = None,
        noise_conditioned: bool | None = None,
        name: str | None = None,
    ) -> None:
        name = f"classifier_{label}" if name is None else name
        if not callable(classifier):
            raise CompositionError(f"{name}: classifier must be an nn.Module or a callable "
                                   f"returning logits, got {type(classifier).__name__}")
        if event_shape is None:
            event_shape = getattr(classifier, "event_shape", None)
            if event_shape is None:
                raise CompositionError(f"{name}: give event_shape= (the classifier has no "
                                       "event_shape attribute)")
        shape = as_event_shape(event_shape)
        if noise_conditioned is None:
            noise_conditioned = bool(getattr(classifier, "noise_conditioned", False))
        if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise CompositionError(f"{name}: label must be an int class index, got {label!r}")
        label = int(label)  # NumPy integers too, as labels read from arrays are
        n_classes = _count_classes(classifier, shape, bool(noise_conditioned), name)
        if not 0 <= label < n_classes:
            raise CompositionError(f"{name}: label must be in [0, {n_classes}) for a classifier "
                                   f"with {n_classes} classes, got {label}")
        super().__init__(shape, name, Capabilities(has_energy=True, has_score=True,
                                                normalizer_known=False, can_sample=False))
        self.label = label
        self.n_classes = n_classes
        self.noise_conditioned = bool(noise_conditioned)
        if isinstance(classifier, nn.Module):
            self.classifier = classifier
        else:
            self._classifier_fn = classifier
        self._freeze()

    def config(self) -> dict:
        """Constructor arguments for :func:`ebmalgebra.save` (the classifier must be a
        registered module type, e.g. :class:`MLPClassifier`)."""
        return {"classifier": self._call_target(), "label": self.label,
                "event_shape": list(self.event_shape),
                "noise_conditioned": self.noise_conditioned, "name": self.name}

    def _call_target(self) -> Callable[..., Tensor]:
        return self.classifier if "classifier" in self._modules else self._classifier_fn

    def logits(self, x: Tensor, t: TimeLike = None) -> Tensor:
        """The classifier's logits ``(batch, n_classes)`` for x ``(batch, *event_shape)``."""
        logits = call_leaf_function(self, self._call_target(), x, t, self.noise_conditioned)
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (x.shape[0], self.n_classes):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise CompositionError(f"{self.name}: the classifier returned {got} for x of shape "
                                   f"{tuple(x.shape)}; expected ({x.shape[0]}, {self.n_classes})")
        return logits

    def _energy(self, x: Tensor, t: TimeLike) -> Tensor:
        logits = self.logits(x, t)
        return torch.logsumexp(logits, dim=1) - logits[:, self.label]


def _count_classes(classifier: Callable, event_shape: torch.Size, noise_conditioned: bool,
                   name: str) -> int:
    """n_classes from ``classifier.n_classes``, else from one evaluation at x = 0."""
    declared = getattr(classifier, "n_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 1:
        return declared
    zeros = torch.zeros((1, *event_shape), **input_options(classifier))
    with torch.no_grad():
        logits = classifier(zeros, 1.0) if noise_conditioned else classifier(zeros)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise CompositionError(f"{name}: the classifier must return logits (batch, n_classes); "
                               f"for x of shape (1, {', '.join(map(str, event_shape))}) it "
                               f"returned {got}")
    return logits.shape[1]


@register_module("MLPClassifier")
class MLPClassifier(nn.Module):
    """Logits f(x) (or f(x, σ)) from an MLP on the flattened x: ``(batch, *event_shape)`` →
    ``(batch, n_classes)``.

    With ``noise_conditioned=True`` the input is scaled by 1/√(σ² + σ_d²)
    (unit variance at every noise level, as in Karras et al. 2022) and every
    hidden layer is shifted by an embedding of log σ, so one net classifies
    images at all noise levels; train it on x + σ ε with σ drawn per sample.

    Args:
        event_shape: shape of one input.
        n_classes: number of classes.
        hidden: widths of the hidden layers.
        noise_conditioned: take σ as a second argument.
        sigma_data: σ_d, the data's standard deviation (input scaling).

    Example:
        >>> clf = MLPClassifier((16, 16), 2, noise_conditioned=True)
        >>> clf(torch.randn(5, 16, 16), 0.5).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        n_classes: int,
        *,
        hidden: Sequence[int] = (256, 256),
        noise_conditioned: bool = False,
        sigma_data: float = 0.5,
    ) -> None:
        from ebmalgebra.learning.nets import NoiseEmbedding

        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        validation.count("n_classes", n_classes, 2)
        hidden = tuple(hidden)
        if not hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                             for w in hidden):
            raise ArgumentError(f"hidden must be a non-empty sequence of positive ints, "
                                f"got {hidden}")
        if not (isinstance(sigma_data, int | float) and sigma_data > 0):
            raise ArgumentError(f"sigma_data must be positive, got {sigma_data!r}")
        self.n_classes = n_classes
        self.noise_conditioned = bool(noise_conditioned)
        self.sigma_data = float(sigma_data)
        widths = (math.prod(self.event_shape), *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                    strict=True))
        self.output = nn.Linear(widths[-1], n_classes)
        if self.noise_conditioned:
            self.embedding = NoiseEmbedding(max(hidden))
            self.shifts = nn.ModuleList(nn.Linear(max(hidden), w) for w in hidden)

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (weights excluded)."""
        return {"event_shape": list(self.event_shape), "n_classes": self.n_classes,
                "hidden": [layer.out_features for layer in self.layers],
                "noise_conditioned": self.noise_conditioned, "sigma_data": self.sigma_data}

    def forward(self, x: Tensor, sigma: TimeLike = None) -> Tensor:
        """Logits ``(batch, n_classes)`` of x ``(batch, *event_shape)``; when noise-conditioned,
        σ is a positive, finite scalar or one per row, ``(batch,)``."""
        from ebmalgebra.learning.nets import _sigma_per_sample

        if x.dim() != len(self.event_shape) + 1 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise CompositionError(f"MLPClassifier expects x of shape (batch, "
                                   f"{', '.join(map(str, self.event_shape))}), got "
                                   f"{tuple(x.shape)}")
        h = x.flatten(1)
        if self.noise_conditioned:
            if sigma is None:
                raise CompositionError("MLPClassifier is noise-conditioned: call it with a "
                                       "noise level, clf(x, sigma)")
            sigma = _sigma_per_sample(sigma, x, self)
            h = h * (sigma.square() + self.sigma_data**2).rsqrt()[:, None]
            features = self.embedding(sigma)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.noise_conditioned:
                h = h + self.shifts[i](features)
            h = nn.functional.silu(h)
        return self.output(h)
