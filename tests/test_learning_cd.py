"""Contrastive divergence and the replay buffer."""

from functools import partial

import pytest
import torch

from ebmalgebra import CapabilityError, from_energy, from_score
from ebmalgebra.datasets import eight_gaussians
from ebmalgebra.learning import MLPEnergy, ReplayBuffer, as_model, contrastive_divergence, fit
from ebmalgebra.samplers import HMC, MALA, ULA, RandomWalkMH


@pytest.mark.slow
def test_cd_with_replay_buffer_covers_all_eight_modes():
    # Small budget (≈ 3 s): 320 Adam steps of CD with 20 ULA steps per batch.
    # Then fresh ULA chains from uniform noise on [−4, 4]² run 500 steps on
    # the learned energy. A chain counts for mode k only within 0.765 of its
    # centre, half the spacing 2·2·sin(π/8) = 1.53 of neighbouring modes (so
    # discs are disjoint; data, std 0.15, leave one only with P = e^{−13}):
    # chains that ran off, as with swapped CD phases, count for none. Half the
    # chains must be in some disc, and each disc must hold ≥ 4% of them (a
    # fair share of 70% near is 8.8%; with 1000 chains the binomial standard
    # error at 4–9% is ≤ 0.9%, so 4% is > 4 of them above 0).
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = eight_gaussians(4000, generator=g)
    model = as_model(MLPEnergy(2, hidden=(64, 64)), name="eight")
    buffer = ReplayBuffer(5000, 2, low=-4.0, high=4.0, generator=g)
    loss = partial(contrastive_divergence, sampler=ULA(step_size=0.01), n_steps=20,
                   buffer=buffer, alpha=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    fit(model, data, loss, epochs=10, batch_size=128, optimizer=optimizer, generator=g,
        progress=False)

    sampler = ULA(step_size=0.01)
    state = sampler.init(8 * torch.rand(1000, 2, generator=g) - 4, model)
    for _ in range(500):
        state, _ = sampler.step(state, g)
    distance = torch.cdist(state.position, eight_gaussians.centers()).min(dim=1).values
    near = distance < 0.765
    shares = eight_gaussians.nearest_mode(state.position[near]).bincount(minlength=8) / 1000
    assert near.double().mean() >= 0.5 and shares.min() >= 0.04, shares


def test_cd_gradient_is_data_minus_model_expectation():
    # With n_steps=0 and chains started at fixed points the negatives are
    # those points, so the loss is exactly mean E(x⁺) − mean E(x⁻) (+ α terms).
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    positives, negatives = torch.randn(16, 2), torch.randn(16, 2)
    buffer = ReplayBuffer.persistent(negatives)
    loss = contrastive_divergence(model, positives, sampler=ULA(step_size=0.01), n_steps=0,
                                  buffer=buffer, alpha=0.5)
    e_pos, e_neg = model.energy(positives), model.energy(negatives)
    expected = e_pos.mean() - e_neg.mean() + 0.5 * (e_pos.square().mean() + e_neg.square().mean())
    torch.testing.assert_close(loss, expected)


def test_cd_without_buffer_starts_chains_at_the_data():
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    x = torch.randn(8, 2)
    loss, negatives = contrastive_divergence(model, x, sampler=ULA(step_size=0.01), n_steps=0,
                                             return_negatives=True)
    torch.testing.assert_close(negatives, x)
    torch.testing.assert_close(loss, torch.zeros(()), atol=1e-6, rtol=0)


def test_persistent_buffer_carries_chains_across_steps():
    x0 = torch.zeros(4, 2)
    buffer = ReplayBuffer.persistent(x0)
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    g = torch.Generator().manual_seed(0)
    _, first = contrastive_divergence(model, torch.randn(4, 2), sampler=ULA(step_size=0.1),
                                      n_steps=3, buffer=buffer, generator=g,
                                      return_negatives=True)
    assert not torch.equal(buffer.samples, x0)
    stored = buffer.samples.clone()
    starts, index = buffer.draw(4, g)
    torch.testing.assert_close(starts, stored[index])  # no re-initialisation
    assert sorted(index.tolist()) == [0, 1, 2, 3]


def test_replay_buffer_reinitialises_a_fraction_from_noise():
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(10_000, 2, low=10.0, high=11.0, reinit_fraction=0.05, generator=g)
    buffer.samples.zero_()
    starts, index = buffer.draw(10_000, g)
    fresh = (starts[:, 0] >= 10).float().mean()
    # Binomial(10_000, 0.05): standard error 0.0022, so ±0.01 is > 4σ.
    assert abs(float(fresh) - 0.05) < 0.01
    assert index.unique().numel() == 10_000
    bad = torch.full((3, 2), float("nan"))
    buffer.update(index[:3], bad)
    assert torch.isfinite(buffer.samples).all()


def test_replay_buffer_validates_arguments():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 2)
    with pytest.raises(ValueError, match="reinit_fraction"):
        ReplayBuffer(10, 2, reinit_fraction=1.5)
    with pytest.raises(ValueError, match="noise"):
        ReplayBuffer(10, 2, noise=lambda n, g: torch.zeros(n, 3))
    buffer = ReplayBuffer(10, 2)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        buffer.draw(11)


# ---------------------------------------------------------------- bad input


def test_cd_rejects_a_score_only_model_naming_it():
    model = from_score(lambda x: -x, 2, name="denoiser")
    with pytest.raises(CapabilityError, match="contrastive_divergence.*'denoiser'.*score-only"):
        contrastive_divergence(model, torch.randn(4, 2), sampler=ULA(step_size=0.1))
    energy = as_model(MLPEnergy(2, hidden=(8,)), name="prior")
    with pytest.raises(CapabilityError, match="'denoiser'"):
        contrastive_divergence(energy & model, torch.randn(4, 2), sampler=ULA(step_size=0.1))


def test_cd_validates_data_and_sampler():
    model = from_energy(lambda x: x.square().sum(-1), 2, name="quad")
    with pytest.raises(ValueError, match="non-finite"):
        contrastive_divergence(model, torch.tensor([[0.0, float("nan")]]),
                               sampler=ULA(step_size=0.1))
    with pytest.raises(TypeError, match="sampler must have init"):
        contrastive_divergence(model, torch.randn(4, 2), sampler="ula")
    with pytest.raises(ValueError, match="buffer holds points of shape"):
        contrastive_divergence(model, torch.randn(4, 2), sampler=ULA(step_size=0.1),
                               buffer=ReplayBuffer(10, 3))


def test_cd_drops_non_finite_negatives_and_raises_when_all_are():
    # The energy is NaN on the half-plane x₁ < 0, where the chains start.
    def energy(x):
        return x.square().sum(-1) + torch.where(x[:, 0] < 0, float("nan"), 0.0)

    model = from_energy(energy, 2, name="half")
    x = torch.rand(4, 2)
    starts = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [2.0, 0.0]])
    loss = contrastive_divergence(model, x, sampler=ULA(step_size=0.1), n_steps=0,
                                  buffer=ReplayBuffer.persistent(starts))
    expected = model.energy(x).mean() - model.energy(starts[[1, 3]]).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(FloatingPointError, match="step size"):
        contrastive_divergence(model, x, sampler=ULA(step_size=0.1), n_steps=0,
                               buffer=ReplayBuffer.persistent(-torch.ones(4, 2)))


@pytest.mark.parametrize("make_sampler", [lambda: MALA(step_size=0.05), lambda: HMC(),
                                          lambda: RandomWalkMH()])
def test_cd_takes_negatives_from_any_library_sampler(make_sampler):
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    g = torch.Generator().manual_seed(0)
    loss, negatives = contrastive_divergence(model, torch.randn(16, 2, generator=g),
                                             sampler=make_sampler(), n_steps=3, generator=g,
                                             buffer=ReplayBuffer(64, 2, generator=g),
                                             return_negatives=True)
    loss.backward()
    assert negatives.shape == (16, 2) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_cd_reinitialises_buffer_chains_whose_energy_is_not_finite():
    # E = +inf on x₁ > 1, at finite positions: a chain stored there is stuck (MALA
    # rejects every move from it), so the buffer must not keep it. A persistent buffer
    # restarts such chains from uniform noise on [−1, 1]², where E is finite; with
    # n_steps=0 the negatives are the starts, so the other rows must come back unchanged.
    def energy(x):
        return x.square().sum(-1) + torch.where(x[:, 0] > 1, float("inf"), 0.0)

    model = from_energy(energy, 2, name="wall")
    starts = torch.tensor([[2.0, 0.0], [0.5, 0.0], [3.0, 1.0], [-0.5, 0.5]])
    buffer = ReplayBuffer.persistent(starts)
    g = torch.Generator().manual_seed(0)
    contrastive_divergence(model, torch.zeros(4, 2), sampler=MALA(step_size=0.01), n_steps=0,
                           buffer=buffer, generator=g)
    assert torch.isfinite(model.energy(buffer.samples)).all()
    torch.testing.assert_close(buffer.samples[[1, 3]], starts[[1, 3]])
    assert (buffer.samples[[0, 2]].abs() <= 1).all()


def test_cd_checks_the_buffer_with_the_energies_it_already_computed():
    # The buffer's finiteness check must not cost model evaluations: with or without a
    # buffer, one CD step evaluates the energy equally often.
    calls = []

    def energy(x):
        calls.append(x.shape[0])
        return x.square().sum(-1)

    model = from_energy(energy, 2, name="counted")
    x = torch.randn(8, 2)
    counts = []
    for buffer in (None, ReplayBuffer.persistent(torch.randn(8, 2))):
        calls.clear()
        contrastive_divergence(model, x, sampler=MALA(step_size=0.1), n_steps=2, buffer=buffer)
        counts.append(len(calls))
    assert counts[0] == counts[1]


def test_replay_buffer_update_replaces_rows_with_a_non_finite_energy_or_score():
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(4, 2, noise=lambda n, generator: torch.full((n, 2), 7.0),
                          reinit_fraction=0.0, generator=g)
    x = torch.arange(8.0).reshape(4, 2)
    energy = torch.tensor([0.0, float("inf"), 1.0, 2.0])
    score = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [float("nan"), 0.0]])
    buffer.update(torch.arange(4), x, energy=energy, score=score, generator=g)
    expected = torch.stack([x[0], torch.full((2,), 7.0), x[2], torch.full((2,), 7.0)])
    torch.testing.assert_close(buffer.samples, expected)
    with pytest.raises(ValueError, match=r"energy must be shaped \(4,\)"):
        buffer.update(torch.arange(4), x, energy=torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"score must be shaped \(4, 2\)"):
        buffer.update(torch.arange(4), x, score=torch.zeros(4))


def test_replay_buffer_rejects_non_float_non_finite_or_unbounded_inputs():
    with pytest.raises(TypeError, match="persistent: x0 must be floating point.*int64"):
        ReplayBuffer.persistent(torch.zeros(4, 2, dtype=torch.long))
    nan_x0 = torch.zeros(4, 2)
    nan_x0[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"persistent: x0 must be finite; chain\(s\) \[2\]"):
        ReplayBuffer.persistent(nan_x0)
    with pytest.raises(ValueError, match="ReplayBuffer: low must be finite, got -inf"):
        ReplayBuffer(4, 2, low=float("-inf"), high=0.0)
    with pytest.raises(ValueError, match="ReplayBuffer: high must be finite, got nan"):
        ReplayBuffer(4, 2, high=float("nan"))
    with pytest.raises(TypeError, match="reinit_fraction must be a real number"):
        ReplayBuffer(4, 2, reinit_fraction="0.1")
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype.*int64"):
        ReplayBuffer(4, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="noise must be callable"):
        ReplayBuffer(4, 2, noise=torch.zeros(4, 2))


@pytest.mark.parametrize(("alpha", "error", "match"), [
    (None, TypeError, "alpha must be a real number"),  # the wrong type, as in float(None)
    (float("nan"), ValueError, "alpha must be finite"),
    (-0.5, ValueError, "alpha must be non-negative")])
def test_cd_rejects_an_alpha_that_is_not_a_non_negative_number(alpha, error, match):
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    with pytest.raises(error, match=f"contrastive_divergence: {match}"):
        contrastive_divergence(model, torch.randn(4, 2), sampler=ULA(step_size=0.1),
                               alpha=alpha)


def test_cd_rejects_a_buffer_or_generator_of_the_wrong_type():
    model = as_model(MLPEnergy(2, hidden=(8,)), name="e")
    x = torch.randn(4, 2)
    with pytest.raises(TypeError, match=r"buffer must be a ReplayBuffer.*persistent\(x0\)"):
        contrastive_divergence(model, x, sampler=ULA(step_size=0.1), buffer=torch.zeros(4, 2))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        contrastive_divergence(model, x, sampler=ULA(step_size=0.1), generator=0)
