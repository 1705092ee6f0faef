"""save / load: exact round trips, the leaf registry, and files that must be refused."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn
from torch.distributions import transforms as tt

import ebmalgebra as eb
from ebmalgebra import io
from ebmalgebra.io import SerializationError, register_leaf, register_module
from ebmalgebra.io.registry import LEAVES
from ebmalgebra.learning.nets import (
    ConvEnergy,
    DenoiserEnergy,
    GaussianEnergy,
    MLPEnergy,
    ResidualMLPDenoiser,
    as_model,
)
from ebmalgebra.leaves import Leaf
from ebmalgebra.targets import Banana, Bar, Funnel, Gaussian, GaussianMixture, Ring
from ebmalgebra.testing import assert_equivalent, expressions, leaves, points


def round_trip(expr: eb.EnergyModel) -> eb.EnergyModel:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "expr.safetensors"
        eb.save(expr, path)
        return eb.load(path)


def assert_identical(a: eb.EnergyModel, b: eb.EnergyModel, x: torch.Tensor, t=None) -> None:
    """Bit-for-bit equal energies and scores (tolerance zero)."""
    if t is None:
        assert_equivalent(a, b, x, rtol=0.0, atol=0.0)
    else:
        assert torch.equal(a.energy(x, t), b.energy(x, t))
        assert torch.equal(a.score(x, t), b.score(x, t))


# ------------------------------------------------------------------ round trips
@settings(max_examples=60)
@given(expressions(max_depth=3), points((2,)))
def test_round_trip_gives_identical_energies_and_scores(expr, x):
    loaded = round_trip(expr)
    assert repr(loaded) == repr(expr)
    assert_identical(loaded, expr, x)


@settings(max_examples=20)
@given(st.data())
def test_round_trip_keeps_repeated_leaves_shared(data):
    pool = [data.draw(leaves((2,))) for _ in range(2)]
    expr = data.draw(expressions(st.sampled_from(pool), max_depth=3))
    loaded = round_trip(expr)
    assert len(list(loaded.leaves())) == len(list(expr.leaves()))
    assert_identical(loaded, expr, data.draw(points((2,))))


def test_every_builtin_target_round_trips_with_its_dtype():
    x = torch.randn(16, 2, dtype=torch.float64)
    targets = [
        Gaussian(torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([1.0, 2.0],
                                                                              dtype=torch.float64)),
        Bar(length=2.5, width=0.3, angle=0.7, center=torch.tensor([1.0, -0.5],
                                                                  dtype=torch.float64)),
        Bar(length=0.2, width=1.0, angle=-2.0),  # width > length: eigenvectors swap roles
        GaussianMixture(torch.randn(3, 2, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0]),
                        weights=[1.0, 2.0, 3.0]),
        Banana(scale=1.5, curvature=0.3, noise=0.7),
        Funnel(2, scale=2.0),
        Ring(radius=1.3, width=0.2),
    ]
    for target in targets:
        loaded = round_trip(target)
        assert type(loaded) is type(target)
        for (name, a), (_, b) in zip(target.state_dict().items(), loaded.state_dict().items(),
                                     strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert_identical(loaded, target, x.to(next(target.buffers()).dtype))


def test_compiled_and_normalized_nodes_round_trip():
    a = Gaussian(torch.zeros(2), 1.0, name="a")
    b = Gaussian(torch.ones(2), 0.5, name="b")
    x = torch.randn(8, 2)
    for expr in [eb.compile(a & b ** 2), eb.compile(a & b, closed_form=True),
                 a.normalized() | (a & b).normalized(log_z=1.25), eb.one & a, a ** 0.0]:
        loaded = round_trip(expr)
        assert repr(loaded) == repr(expr)
        assert_identical(loaded, expr, x)


def test_normalized_nodes_keep_their_stderr_and_old_files_load(tmp_path):
    g = Gaussian(torch.zeros(2), 1.0, name="g")
    node = eb.Normalized(g ** 2, 1.2, stderr=0.05)
    loaded = round_trip(node)
    assert loaded.log_z_stderr == 0.05
    assert loaded.explain().splitlines()[0] == node.explain().splitlines()[0]
    assert round_trip(eb.Normalized(g ** 2, 1.2)).log_z_stderr is None
    # Files written before the stderr was saved have no "stderr" field.
    eb.save(node, tmp_path / "new.safetensors")
    document, tensors = read(tmp_path / "new.safetensors")
    assert document["root"].pop("stderr") == 0.05
    old = eb.load(write(tmp_path / "old.safetensors", document, tensors))
    assert old.log_z_stderr is None and float(old.log_normalizer) == 1.2


def test_module_backed_leaves_round_trip_with_weights_and_noise_levels():
    torch.manual_seed(0)
    mlp = as_model(MLPEnergy(2, hidden=(8, 8), activation="softplus"), name="mlp")
    noisy = as_model(MLPEnergy(2, hidden=(8,), noise_conditioned=True), name="noisy")
    conv = as_model(ConvEnergy((8, 8), channels=(4, 4), noise_conditioned=True), name="conv")
    gaussian = as_model(GaussianEnergy(2, loc=torch.tensor([1.0, 2.0])), name="gauss")
    denoiser = as_model(DenoiserEnergy(ResidualMLPDenoiser((8, 8), width=16, depth=2)),
                        name="denoiser")
    sequential = eb.from_energy(
        nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 1)),
        2, name="seq", log_z=0.5)
    score_only = eb.from_score(nn.Sequential(nn.Linear(2, 2)), 2, name="denoise")
    x2, x8 = torch.randn(5, 2), torch.randn(5, 8, 8)
    assert_identical(round_trip(mlp & gaussian ** 2 | sequential), mlp & gaussian ** 2 |
                     sequential, x2)
    assert_identical(round_trip(mlp & score_only), mlp & score_only, x2)
    assert_identical(round_trip(noisy), noisy, x2, t=0.3)
    assert_identical(round_trip(conv & denoiser ** 0.5), conv & denoiser ** 0.5, x8, t=0.7)
    loaded = round_trip(sequential)
    assert float(loaded.log_z()) == 0.5


def test_noise_conditioned_leaves_round_trip_with_their_schedules():
    """Diffusion leaves (networks by state dict, schedules by spec), noised mixtures and
    models normalised over noise levels give equal energies and scores after loading."""
    from ebmalgebra.diffusion import DiscreteVP, from_energy_network, from_prediction
    from ebmalgebra.noise_normalized import NoiseNormalized
    from ebmalgebra.schedules import VE, VP

    torch.manual_seed(0)
    discrete = DiscreteVP(torch.linspace(0.999, 0.2, 50, dtype=torch.float64),
                          timesteps="nearest")
    x0 = from_prediction(ResidualMLPDenoiser((2,), width=16, depth=2), VP(beta_min=0.5),
                         prediction="x0", event_shape=2, name="x0net")
    energy = from_energy_network(MLPEnergy(2, hidden=(8,), noise_conditioned=True), discrete,
                                 parameterization="epsilon", event_shape=2, name="head")
    noised = GaussianMixture(torch.tensor([[-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64),
                             torch.tensor([0.5, 0.8], dtype=torch.float64)).noised(VE())
    normalised = NoiseNormalized(noised, [0.1, 1.0, 3.0], [0.5, 1.5, 2.0], [0.01, 0.02, 0.03])
    x = torch.randn(6, 2)
    score_only = x0 & x0 ** 0.5
    loaded = round_trip(score_only)
    assert repr(loaded) == repr(score_only)
    assert torch.equal(loaded.score(x, 0.4), score_only.score(x, 0.4))
    for model, inputs, t in ((energy, x, 0.3), (normalised, x.double(), 0.5),
                             (normalised | noised, x.double(), 2.0)):
        loaded = round_trip(model)
        assert repr(loaded) == repr(model)
        assert_identical(loaded, model, inputs, t=t)
    loaded = round_trip(energy)
    assert repr(loaded.schedule) == repr(discrete)
    # Saved as ᾱ = 1 − σ² and rebuilt as σ = √(1 − ᾱ): equal up to float64 rounding, which
    # near σ_0 = √0.001 is relatively ~1e-16 / σ_0² ≈ 1e-13.
    torch.testing.assert_close(loaded.schedule.sigmas, discrete.sigmas, rtol=1e-12, atol=0)
    assert round_trip(x0).schedule.beta_min == 0.5
    assert torch.equal(round_trip(normalised).log_z_stderr, normalised.log_z_stderr)


def test_supports_of_function_leaves_are_saved(tmp_path):
    from torch.distributions import constraints

    model = eb.from_log_prob(nn.Sequential(nn.Linear(2, 1)), 2, name="scales",
                             support=constraints.independent(constraints.positive, 1))
    loaded = round_trip(model)
    assert repr(loaded.support) == repr(model.support)
    interval = eb.from_energy(nn.Sequential(nn.Linear(1, 1)), 1, name="p",
                              support=constraints.interval(-1.0, 2.5))
    assert (round_trip(interval).support.lower_bound, round_trip(interval).support.upper_bound
            ) == (-1.0, 2.5)
    with pytest.raises(SerializationError, match="support .* has no file form"):
        eb.save(eb.from_energy(nn.Sequential(nn.Linear(2, 1)), 2, name="s",
                               support=constraints.simplex), tmp_path / "s.safetensors")


def test_supports_with_tensor_bounds_are_saved_with_their_dtype():
    # Regression: saving a per-coordinate interval (a Uniform's bounds) raised a bare
    # ValueError from float(tensor).
    from torch.distributions import constraints

    lower = torch.tensor([0.0, 1.0], dtype=torch.float64)
    upper = torch.tensor([2.0, 3.5], dtype=torch.float64)
    support = constraints.independent(constraints.interval(lower, upper), 1)
    model = eb.from_log_prob(nn.Sequential(nn.Linear(2, 1)), 2, name="box", support=support)
    loaded = round_trip(model).support.base_constraint
    assert torch.equal(loaded.lower_bound, lower) and torch.equal(loaded.upper_bound, upper)
    assert loaded.lower_bound.dtype == torch.float64


def test_loaded_parameters_are_trainable_and_shared_like_the_original():
    net = as_model(MLPEnergy(2, hidden=(4,)), name="net")
    loaded = round_trip(net & net ** 3)
    assert sum(1 for _ in loaded.parameters()) == sum(1 for _ in net.parameters())
    assert all(p.requires_grad for p in loaded.parameters())


def test_a_module_shared_by_two_leaves_stays_shared(tmp_path):
    hidden = nn.Linear(2, 3)
    net = nn.Sequential(hidden, nn.Tanh(), nn.Linear(3, 1))
    other = nn.Sequential(hidden, nn.Tanh(), nn.Linear(3, 1))  # shares the hidden layer
    expr = (eb.from_energy(net, 2, name="e1") & eb.from_energy(net, 2, name="e2") ** 2
            | eb.from_energy(other, 2, name="e3"))
    eb.save(expr, tmp_path / "shared.safetensors")
    loaded = eb.load(tmp_path / "shared.safetensors")
    assert len(list(loaded.parameters())) == len(list(expr.parameters())) == 6
    x = torch.randn(5, 2)
    assert_identical(loaded, expr, x)
    # One update reaches every leaf that uses the layer, as in the original.
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
        hidden.weight.add_(1.0)
    assert_identical(loaded, expr, x)
    # Files from before modules were shared repeat the module: they load, unshared.
    document, tensors = read(tmp_path / "shared.safetensors")
    first = document["leaves"][0]["config"]["fn"]
    assert document["leaves"][1]["config"]["fn"] == {"$same_module": "leaves.0.config.fn"}
    document["leaves"][1]["config"]["fn"] = first
    document["leaves"][2]["config"]["fn"]["config"]["modules"][0] = first["config"]["modules"][0]
    old = eb.load(write(tmp_path / "old.safetensors", document, tensors))
    assert len(list(old.parameters())) == 12
    assert_identical(old, eb.load(tmp_path / "shared.safetensors"), x)


@pytest.mark.parametrize("edit, message", [
    (lambda d, t: d["leaves"][1]["config"].__setitem__("fn", {"$same_module": "leaves.9.x"}),
     "refers to module 'leaves.9.x', which is not written before it"),
    (lambda d, t: t.__setitem__("leaves.1.module.bias", t["leaves.1.module.bias"] + 1),
     "shared with 'leaves.0.module.bias' but has other values"),
])
def test_broken_module_sharing_is_refused(tmp_path, edit, message):
    net = nn.Linear(2, 1)
    eb.save(eb.from_energy(net, 2, name="e1") & eb.from_energy(net, 2, name="e2") ** 2,
            tmp_path / "shared.safetensors")
    document, tensors = read(tmp_path / "shared.safetensors")
    edit(document, tensors)
    for key, tensor in tensors.items():  # a consistent forgery: records match the tensors
        document["tensors"][key] = io.tensor_record(tensor)
    with pytest.raises(SerializationError, match=message):
        eb.load(write(tmp_path / "broken.safetensors", document, tensors))

# --------------------------------------------------------------------- registry
class Shifted(Leaf):
    """A user leaf: E = ½‖x − c‖², c a float hyper-parameter, plus a scale buffer."""

    analytic_score = False

    def __init__(self, center: float, *, name: str = "shifted") -> None:
        super().__init__(torch.Size([2]), name, eb.Capabilities(
            has_energy=True, has_score=True, normalizer_known=False, can_sample=False))
        self.center = float(center)
        self.register_buffer("scale", torch.ones(2))

    def _energy(self, x, t):
        return 0.5 * (self.scale * (x - self.center) ** 2).sum(-1)

    def config(self) -> dict:
        return {"center": self.center, "name": self.name}


class Quadratic(nn.Module):
    """A user module: E = ½ Σ a_i x_i²."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return 0.5 * (self.a * x**2).sum(-1)


def test_users_register_their_own_leaves_and_modules():
    register_leaf("test_io.shifted")(Shifted)
    register_module("test_io.quadratic", config=lambda m: {"dim": m.a.shape[0]})(Quadratic)
    leaf = Shifted(1.5, name="s")
    with torch.no_grad():
        leaf.scale.mul_(3.0)
    quad = eb.from_energy(Quadratic(2), 2, name="quad")
    x = torch.randn(6, 2)
    loaded = round_trip(leaf & quad ** -0.5)
    assert repr(loaded) == "s & quad ** -0.5"
    assert_identical(loaded, leaf & quad ** -0.5, x)
    assert "test_io.shifted" in io.registered_leaf_types()
    assert "test_io.quadratic" in io.registered_module_types()


def test_registering_needs_a_config_and_a_free_name():
    class NoConfig(Leaf):
        pass

    with pytest.raises(TypeError, match="config"):
        register_leaf("test_io.no_config")(NoConfig)
    with pytest.raises(ValueError, match="already registered"):
        register_leaf("gaussian", config=lambda leaf: {})(NoConfig)


def test_a_class_defined_again_replaces_its_registration():
    # A notebook cell or script run twice defines a new class of the same module and name.
    def define():
        class Redefined(Leaf):
            def config(self):
                return {}
        return register_leaf("test_io.redefined")(Redefined)

    first, second = define(), define()
    assert first is not second
    assert LEAVES.by_name["test_io.redefined"].cls is second
    assert first not in LEAVES.by_class


# ----------------------------------------------------------------- save errors
def test_saving_a_callable_leaf_is_a_clear_error(tmp_path):
    lam = eb.from_energy(lambda x: (x**2).sum(-1), 2, name="lam")
    with pytest.raises(SerializationError, match=r"'lam'.*Python callable .*<lambda>"):
        eb.save(Gaussian(torch.zeros(2), 1.0) & lam, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_saving_unregistered_types_names_the_leaf(tmp_path):
    dist = eb.from_distribution(torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1), name="dist")
    with pytest.raises(SerializationError, match="'dist'.*DistributionLeaf is not registered"):
        eb.save(dist, tmp_path / "x.safetensors")

    class Unknown(nn.Module):
        def forward(self, x):
            return x.sum(-1)

    with pytest.raises(SerializationError, match="module type .*Unknown is not registered"):
        eb.save(eb.from_energy(Unknown(), 2, name="u"), tmp_path / "x.safetensors")


# ----------------------------------------------------------------- load errors
@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    net = as_model(MLPEnergy(2, hidden=(4,)), name="net")
    eb.save(net & Gaussian(torch.zeros(2), 1.0, name="g") ** 2, path)
    return path


def read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    data = path.read_bytes()
    return json.loads(io.read_header(data, "x")["__metadata__"]["ebmalgebra"]), load_tensors(data)


def write(path: Path, document: dict | str, tensors: dict[str, torch.Tensor]) -> Path:
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_bytes(save_tensors(tensors, metadata={"ebmalgebra": text}))
    return path


class Payload:
    """Unpickling this would create the marker file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, blob in [("pickle", pickle.dumps(Payload(marker))),
                       ("torch", None)]:
        path = tmp_path / f"{name}.safetensors"
        if blob is None:
            torch.save({"x": Payload(marker)}, path)
        else:
            path.write_bytes(blob)
        with pytest.raises(SerializationError, match="not a safetensors file"):
            eb.load(path)
    assert not marker.exists()


def test_a_json_naming_os_system_is_refused_without_running(saved, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    document, tensors = read(saved)
    document["leaves"][0]["type"] = "os.system"
    with pytest.raises(SerializationError, match="unknown type 'os.system'"):
        eb.load(write(tmp_path / "leaf.safetensors", document, tensors))
    document, tensors = read(saved)
    document["leaves"][0]["config"]["fn"] = {"$module": "os.system",
                                             "config": {"command": "touch pwned"}}
    with pytest.raises(SerializationError, match="unknown module type 'os.system'"):
        eb.load(write(tmp_path / "module.safetensors", document, tensors))
    document, tensors = read(saved)
    document["root"] = {"op": "__import__('os').system('touch pwned')"}
    with pytest.raises(SerializationError, match="unknown node"):
        eb.load(write(tmp_path / "op.safetensors", document, tensors))
    assert calls == []


@pytest.mark.parametrize("edit, message", [
    (lambda d, t: t.__setitem__("leaves.0.module.output.bias", torch.ones(1)),
     "does not match its recorded sha256"),
    (lambda d, t: t.__setitem__("leaves.0.module.output.bias", torch.zeros(2)),
     r"has shape \[2\] but \[1\] was recorded"),
    (lambda d, t: t.__setitem__("leaves.0.module.output.bias", torch.zeros(1).double()),
     "has dtype float64 but 'float32' was recorded"),
    (lambda d, t: t.pop("leaves.1.loc"), "recorded but missing"),
    (lambda d, t: t.__setitem__("leaves.9.extra", torch.zeros(1)), "not recorded"),
    (lambda d, t: d.__setitem__("format", "pickle"), "'format' must be"),
    (lambda d, t: d.__setitem__("version", 99), "unsupported version 99"),
    (lambda d, t: d["root"]["children"][0].__setitem__("leaf", 7), "not an index"),
    (lambda d, t: d["root"]["children"][1].__setitem__("exponent", "2"), "must be a number"),
    (lambda d, t: d["leaves"][1]["config"].__setitem__("loc", {"$tensor": "nope"}),
     "refers to tensor 'nope'"),
    (lambda d, t: d["leaves"][1]["config"].__setitem__("loc", {"eval": "1"}),
     "unsupported value"),
    (lambda d, t: d["leaves"][0]["config"]["fn"]["config"].__setitem__("hidden", [5]),
     "leaf expects float32 \\[5"),
    (lambda d, t: d["leaves"][1]["config"].__setitem__("scale", -1.0), "cannot rebuild leaf 1"),
])
def test_tampered_files_are_refused_with_a_clear_error(saved, tmp_path, edit, message):
    document, tensors = read(saved)
    edit(document, tensors)
    with pytest.raises(SerializationError, match=message):
        eb.load(write(tmp_path / "tampered.safetensors", document, tensors))


@pytest.mark.parametrize("transform, message", [
    (["affine", 1.0, 0.0, 0], "'affine': scale must be .* nonzero, got 0.0"),
    (["affine", [1.0, 2.0], 2.0, 0], r"'affine': loc must be .* got \[1.0, 2.0\]"),
    (["affine", "1", 2.0, 0], "'affine': loc must be .* got '1'"),
    (["affine", 1.0, float("nan"), 0], "'affine': scale must be .* got nan"),
    (["affine", 1.0, 2.0, -1], "'affine': event_dim must be a non-negative integer"),
    (["affine", 1.0, 2.0, 0.5], "'affine': event_dim must be a non-negative integer"),
    (["compose", ["exp"], ["power", 0]], "'power': exponent must be .* nonzero, got 0"),
    (["inverse", ["power", True]], "'power': exponent must be .* got True"),
])
def test_transform_arguments_are_checked_when_loading(tmp_path, transform, message):
    a = Gaussian(torch.zeros(2), 1.0, name="a")
    eb.save(a.pushforward(tt.AffineTransform(1.0, 2.0)), tmp_path / "push.safetensors")
    document, tensors = read(tmp_path / "push.safetensors")
    assert document["root"]["transform"] == ["affine", 1.0, 2.0, 0]
    document["root"]["transform"] = transform
    with pytest.raises(SerializationError, match=message):
        eb.load(write(tmp_path / "bad.safetensors", document, tensors))


def test_transforms_with_tensor_arguments_still_load():
    a = Gaussian(torch.zeros(2), 1.0, name="a")
    expr = a.pushforward(tt.AffineTransform(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5]),
                                            event_dim=1)).pushforward(tt.PowerTransform(3.0))
    x = torch.rand(5, 2) + 0.5
    torch.testing.assert_close(round_trip(expr).energy(x), expr.energy(x))


def test_consistent_forgeries_still_have_to_fit_the_rebuilt_leaf(saved, tmp_path):
    document, tensors = read(saved)
    key = "leaves.0.module.output.weight"
    tensors[key] = torch.zeros(1, 5)
    document["tensors"][key] = io._tensor_record(tensors[key])
    with pytest.raises(SerializationError, match=r"leaf 0 .* expects float32 \[1, 4\]"):
        eb.load(write(tmp_path / "forged.safetensors", document, tensors))


def test_files_nested_past_the_stack_are_refused(saved, tmp_path):
    # Regression: JSON or transforms nested ~1000 deep raised RecursionError, not
    # SerializationError.
    document, tensors = read(saved)
    text = json.dumps(document).replace('"root": ', '"root": ' + "[" * 5000, 1)
    with pytest.raises(SerializationError, match="nested too deeply"):
        eb.load(write(tmp_path / "json.safetensors", text, tensors))
    push = Gaussian(torch.zeros(2), 1.0, name="a").pushforward(tt.ExpTransform())
    eb.save(push, tmp_path / "push.safetensors")
    document, tensors = read(tmp_path / "push.safetensors")
    transform = ["exp"]
    for _ in range(600):  # JSON reads it; decoding it recursively would not
        transform = ["inverse", transform]
    document["root"]["transform"] = transform
    with pytest.raises(SerializationError, match="nested too deeply"):
        eb.load(write(tmp_path / "deep.safetensors", document, tensors))


def test_malformed_and_foreign_files_are_refused(saved, tmp_path):
    _, tensors = read(saved)
    cases = {
        "malformed JSON": write(tmp_path / "a.safetensors", "{not json", tensors),
        "not an ebmalgebra expression": tmp_path / "b.safetensors",
        "not a safetensors file": tmp_path / "c.safetensors",
        "cannot read": tmp_path / "missing.safetensors",
        "must be a JSON object": write(tmp_path / "d.safetensors", "[1, 2]", tensors),
        "nested deeper": tmp_path / "e.safetensors",
    }
    (tmp_path / "b.safetensors").write_bytes(save_tensors({"x": torch.zeros(1)}, metadata={}))
    (tmp_path / "c.safetensors").write_bytes(b"\x00" * 3)
    deep: dict = {"leaf": 0}
    for _ in range(300):
        deep = {"op": "power", "exponent": 1.0, "child": deep}
    document, tensors = read(saved)
    document["root"] = deep
    write(tmp_path / "e.safetensors", document, tensors)
    for message, path in cases.items():
        with pytest.raises(SerializationError, match=message):
            eb.load(path)


def test_serialization_errors_are_value_errors():
    assert issubclass(SerializationError, ValueError)
    assert issubclass(SerializationError, eb.EBMAlgebraError)


def test_a_float64_network_loads_into_its_recorded_dtype(tmp_path):
    # The architecture is rebuilt in torch's default dtype; the file's float64 weights
    # must come back as float64, not be refused.
    net = MLPEnergy((2,), hidden=(8,)).double()
    expr = as_model(net, name="net") & Gaussian(torch.zeros(2, dtype=torch.float64), 1.0,
                                                name="g")
    loaded = round_trip(expr)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert_identical(loaded, expr, torch.randn(5, 2, dtype=torch.float64))
