"""Contrastive divergence and the replay buffer."""

from functools import partial

import pytest
import torch

from ebmalgebra import CapabilityError, from_energy, from_score
from ebmalgebra.datasets import eight_gaussians
from ebmalgebra.learning import MLPEnergy, ReplayBuffer, as_model, contrastive_divergence, fit
from ebmalgebra.samplers import HMC, MALA, ULA, RandomWalkMH


def test_cd_with_replay_buffer_covers_all_eight_modes():
    # Small budget (≈ 3 s): 320 Adam steps of CD with 20 ULA steps per batch.
    # Then fresh ULA chains from uniform noise on [−4, 4]² run 500 steps on
    # the learned energy; all 8 modes must hold ≥ 5% of them (a fair share
    # is 12.5%; with 1000 chains the binomial standard error is ≈ 1%).
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
    shares = eight_gaussians.nearest_mode(state.position).bincount(minlength=8) / 1000
    assert shares.min() >= 0.05, shares


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
