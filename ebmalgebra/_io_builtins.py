"""How the library's own leaves and modules describe their config for :mod:`ebmalgebra.io`.

Each ``config`` function returns keyword arguments that rebuild the object
with the right shapes, dtypes and plain-float hyper-parameters; the file's
parameters and buffers are then loaded into it, so derived quantities need
not be reproduced exactly. Classes that define their own ``config()`` method
use it instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ebmalgebra import targets
from ebmalgebra.diffusion import DiffusionEnergy, DiffusionScore
from ebmalgebra.io import supports
from ebmalgebra.leaves import EnergyFunction, ScoreFunction
from ebmalgebra.noised import NoisedGaussianMixture
from ebmalgebra.schedules import schedule_from_spec


def _wrapped(leaf: EnergyFunction | ScoreFunction) -> Callable:
    """The module or callable a function leaf evaluates."""
    return leaf.module if "module" in leaf._modules else leaf._fn


def _energy_function(leaf: EnergyFunction) -> dict:
    has_log_z = "log_normalizer" in leaf._buffers
    return {"fn": _wrapped(leaf), "event_shape": list(leaf.event_shape), "name": leaf.name,
            "log_z": float(leaf.log_normalizer) if has_log_z else None,
            "noise_conditioned": leaf.noise_conditioned, "sign": float(leaf._sign),
            "support": supports.encode(leaf.support, leaf)}


def _build_energy_function(support: list | None = None, **config: object) -> EnergyFunction:
    # Files written before supports were saved have none: ℝ, the default.
    return EnergyFunction(**config, support=supports.decode(support or ["real"]))


def _noised_gaussian_mixture(leaf: NoisedGaussianMixture) -> dict:
    vectors, values = leaf.eigenvectors, leaf.eigenvalues
    return {"locs": leaf.locs, "covariances": vectors @ torch.diag_embed(values) @ vectors.mT,
            "weights": leaf.log_weights.exp(), "schedule": leaf.schedule.spec(),
            "name": leaf.name}


def _diffusion_leaf(leaf: DiffusionScore | DiffusionEnergy) -> dict:
    """Network (a registered module; its weights are in the file), schedule spec, the
    prediction or parameterization, and ``network_time`` (None or a registered module)."""
    config = {"network": _wrapped(leaf), "schedule": leaf.schedule.spec(),
              "event_shape": list(leaf.event_shape), "name": leaf.name,
              "network_time": leaf._network_time}
    if isinstance(leaf, DiffusionScore):
        return {**config, "prediction": leaf.prediction}
    return {**config, "parameterization": leaf.parameterization}


def _with_schedule(cls: type) -> Callable[..., object]:
    """``build`` for leaves whose config holds a schedule spec."""
    return lambda schedule, **config: cls(schedule=schedule_from_spec(schedule), **config)


def _score_function(leaf: ScoreFunction) -> dict:
    return {"fn": _wrapped(leaf), "event_shape": list(leaf.event_shape), "name": leaf.name,
            "noise_conditioned": leaf.noise_conditioned}


def _bar(leaf: targets.Bar) -> dict:
    # A Bar keeps only its covariance; any (length, width, angle) reproducing it
    # rebuilds the right shapes, and the saved buffers then restore it exactly.
    covariance = (leaf.scale_tril @ leaf.scale_tril.mT).double()
    variances, vectors = torch.linalg.eigh(covariance)
    along = vectors[:, 1]
    return {"length": math.sqrt(float(variances[1])), "width": math.sqrt(float(variances[0])),
            "angle": math.atan2(float(along[1]), float(along[0])), "center": leaf.loc,
            "name": leaf.name}


_TARGETS: dict[str, tuple[type, Callable[[object], dict]]] = {
    "gaussian": (targets.Gaussian,
                 lambda g: {"loc": g.loc, "scale": g.scale, "name": g.name}),
    "multivariate_gaussian": (targets.MultivariateGaussian,
                              lambda g: {"loc": g.loc, "scale_tril": g.scale_tril,
                                         "name": g.name}),
    "bar": (targets.Bar, _bar),
    "gaussian_mixture": (targets.GaussianMixture,
                         lambda g: {"locs": g.locs,
                                    "covariances": g.scale_trils @ g.scale_trils.mT,
                                    "weights": g.weights, "name": g.name}),
    "banana": (targets.Banana,
               lambda b: {"scale": b.scale, "curvature": b.curvature, "noise": b.noise,
                          "name": b.name}),
    "funnel": (targets.Funnel,
               lambda f: {"dim": f.event_shape[0], "scale": f.scale, "name": f.name}),
    "ring": (targets.Ring, lambda r: {"radius": r.radius, "width": r.width, "name": r.name}),
}


def _activation_name(module: nn.Module) -> str:
    names = {nn.SiLU: "silu", nn.Softplus: "softplus", nn.ELU: "elu", nn.Tanh: "tanh",
             nn.GELU: "gelu"}
    return names[type(module)]


def _net_configs() -> dict[str, tuple[type, Callable[[object], dict] | None]]:
    """Networks of :mod:`ebmalgebra.learning.nets`, with a config for those lacking ``config()``."""
    from ebmalgebra.learning import nets

    return {
        "MLPEnergy": (nets.MLPEnergy, lambda m: {
            "event_shape": list(m.event_shape),
            "hidden": [layer.out_features for layer in m.layers],
            "activation": _activation_name(m.activation),
            "noise_conditioned": m.noise_conditioned}),
        "ConvEnergy": (nets.ConvEnergy, lambda m: {
            "image_shape": list(m.event_shape),
            "channels": [conv.out_channels for conv in m.convs],
            "activation": _activation_name(m.activation),
            "noise_conditioned": m.noise_conditioned}),
        "GaussianEnergy": (nets.GaussianEnergy, lambda m: {"dim": m.event_shape[0]}),
        "ResidualMLPDenoiser": (nets.ResidualMLPDenoiser, None),  # has config()
        "DenoiserEnergy": (nets.DenoiserEnergy, lambda m: {"denoiser": m.denoiser}),
    }


_TORCH_MODULES: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {
    "torch.nn.Linear": (nn.Linear, lambda m: {"in_features": m.in_features,
                                              "out_features": m.out_features,
                                              "bias": m.bias is not None}),
    "torch.nn.Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim,
                                                "end_dim": m.end_dim}),
    "torch.nn.Identity": (nn.Identity, lambda m: {}),
    "torch.nn.SiLU": (nn.SiLU, lambda m: {}),
    "torch.nn.ReLU": (nn.ReLU, lambda m: {}),
    "torch.nn.Tanh": (nn.Tanh, lambda m: {}),
    "torch.nn.Sigmoid": (nn.Sigmoid, lambda m: {}),
    "torch.nn.ELU": (nn.ELU, lambda m: {"alpha": m.alpha}),
    "torch.nn.GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "torch.nn.LeakyReLU": (nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope}),
    "torch.nn.Softplus": (nn.Softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
}


def _register_operators(register_operator: Callable) -> None:
    """The built-in composite nodes; each gives its own spec and rebuild."""
    from ebmalgebra.compile import CompiledEnergy
    from ebmalgebra.condition import Conditioned
    from ebmalgebra.io.registry import OPERATORS
    from ebmalgebra.jit import InductorEnergy
    from ebmalgebra.leaves import One, one
    from ebmalgebra.negation import Without
    from ebmalgebra.noise_normalized import NoiseNormalized
    from ebmalgebra.ops import Mixture, Normalized, Power, Product, Weight
    from ebmalgebra.pushforward import Pushforward

    register_operator("one", spec=lambda node: {}, build=lambda operands, spec: one)(One)
    register_operator("product")(Product)
    register_operator("mixture")(Mixture)
    register_operator("weight", numbers=("weight",))(Weight)
    register_operator("power", numbers=("exponent",))(Power)
    register_operator("normalized")(Normalized)
    register_operator("noise_normalized")(NoiseNormalized)
    register_operator("pushforward")(Pushforward)
    register_operator("condition")(Conditioned)
    register_operator("without")(Without)
    # A compiled node stores the expression as given, not its closed-form rewrite.
    register_operator("compile", operands=lambda node: (node.source,))(CompiledEnergy)
    # Same file form as ``compile``: the backend is a field of the spec.
    OPERATORS.by_class[InductorEnergy] = OPERATORS.by_name["compile"]


def register(register_leaf: Callable, register_module: Callable,
             register_operator: Callable) -> None:
    """Register the built-in leaf, module and operator types with :mod:`ebmalgebra.io`."""
    _register_operators(register_operator)
    # The apps register their leaves when imported, and `import ebmalgebra` no longer
    # imports them, so a file naming them must still load in a fresh process.
    import ebmalgebra.apps.guidance  # noqa: F401
    import ebmalgebra.apps.likelihood  # noqa: F401

    register_leaf("energy_function", config=_energy_function,
                  build=_build_energy_function)(EnergyFunction)
    register_leaf("noised_gaussian_mixture", config=_noised_gaussian_mixture,
                  build=_with_schedule(NoisedGaussianMixture))(NoisedGaussianMixture)
    register_leaf("diffusion_score", config=_diffusion_leaf,
                  build=_with_schedule(DiffusionScore))(DiffusionScore)
    register_leaf("diffusion_energy", config=_diffusion_leaf,
                  build=_with_schedule(DiffusionEnergy))(DiffusionEnergy)
    register_leaf("score_function", config=_score_function)(ScoreFunction)
    for name, (cls, config) in _TARGETS.items():
        register_leaf(name, config=getattr(cls, "config", None) or config)(cls)
    for name, (cls, config) in {**_net_configs(), **_TORCH_MODULES}.items():
        register_module(name, config=getattr(cls, "config", None) or config)(cls)
    register_module("torch.nn.Sequential", config=lambda m: {"modules": list(m)},
                    build=lambda modules: nn.Sequential(*modules))(nn.Sequential)
