"""The off-data margin: the hinge's closed form on point data, invariance to energy shifts,
and where the off-data points lie."""

import math

import pytest
import torch
from torch import nn

from ebmalgebra import ArgumentError, from_energy
from ebmalgebra.learning import as_model, off_data_margin, off_data_points


def point_data_energy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """−log p_σ + const for data at the origin: p_σ = N(0, σ² I), E = ‖x‖²/(2σ²)."""
    return x.flatten(1).square().sum(1) / (2 * sigma.square())


class ShiftedPointEnergy(nn.Module):
    """E = ‖x‖²/(2σ²) + b with a learnable offset b."""

    noise_conditioned = True
    event_shape = torch.Size([2])

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return point_data_energy(x, sigma) + self.offset


def test_margin_on_point_data_matches_the_chi_square_closed_form():
    # Data all at the origin with no pixel noise (σ₀ = 0), and the exact energy of the
    # noised data E(x, σ) = ‖x‖²/(2σ²). Every off-data u is at distance ‖u‖ from the
    # batch, so the uncapped margin is ‖u‖²/(2σ²) − d/2 and it cancels E(u, σ):
    # the shortfall is E(y, σ) − d/2 = (‖ε‖² − d)/2 with y = σε, whatever u is.
    # For d = 2, ‖ε‖² ~ Exp(mean 2): E relu(‖ε‖² − 2)/2 = ∫₂^∞ (x − 2)/2 · e^(−x/2)/2 dx
    # = e^(−1), and E[(relu(‖ε‖² − 2)/2)²] = 2 e^(−1), so one point's standard deviation
    # is √(2/e − 1/e²) ≈ 0.775 and the mean of n = 4096 has error ≈ 0.0121: 4 of them.
    model = from_energy(point_data_energy, 2, name="point", noise_conditioned=True)
    batch = torch.zeros(4096, 2, dtype=torch.float64)
    cap = 1e12  # never binds: the closed form is uncapped
    loss = off_data_margin(model, batch, center=torch.zeros(2, dtype=torch.float64),
                           radius=3.0, data_noise=0.0, cap=cap,
                           generator=torch.Generator().manual_seed(0))
    standard_error = math.sqrt(2 / math.e - math.exp(-2)) / math.sqrt(4096)
    assert float(loss) * cap == pytest.approx(math.exp(-1), abs=4 * standard_error)


def test_margin_is_blind_to_a_shift_of_every_energy():
    # Raising every energy by b leaves each E(y, σ) − E(u, σ) alone, so the gradient
    # in b is exactly zero: the loss cannot be met by lifting the data's energies too.
    net = ShiftedPointEnergy()
    model = as_model(net, name="shifted")
    batch = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    loss = off_data_margin(model, batch, center=torch.zeros(2), radius=4.0, data_noise=0.1,
                           generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert float(loss.detach()) > 0
    assert float(net.offset.grad) == 0.0


def test_cap_bounds_the_margin():
    # With a flat energy (E ≡ 0) every u falls short by exactly relu(min(cap, margin)),
    # so the loss lies in [0, 1] and far points contribute exactly 1.
    flat = from_energy(lambda x, sigma: torch.zeros(x.shape[0], dtype=x.dtype), 2, name="flat",
                       noise_conditioned=True)
    batch = torch.zeros(64, 2)
    loss = off_data_margin(flat, batch, center=torch.full((2,), 1e4), radius=1.0,
                           data_noise=0.0, cap=5.0, sigma_max=0.01,
                           generator=torch.Generator().manual_seed(3))
    # The two ball groups (half of the points) lie 1e4·√2 ± 1 away: margin capped at 5,
    # contributing ½. The blends of zeros are at 0: margin −1, hinge 0. The noised group
    # (a quarter) has margin ‖u‖²/2e-4 − 1 at σ = 0.01, capped at 5 beyond ‖u‖ ≈ 0.035:
    # between 0 and ¼.
    assert 0.5 <= float(loss) <= 1.0


def test_off_data_points_lie_where_they_should():
    batch = torch.zeros(4000, 2)
    batch[:, 0] = 1.0
    center, radius = torch.tensor([1.0, 0.0]), 2.0
    points = off_data_points(batch, center, radius, generator=torch.Generator().manual_seed(4))
    shell, interior, noised, blends = points.split(1000)
    assert points.shape == (4000, 2)
    for group in (shell, interior):
        assert float((group - center).norm(dim=1).max()) <= radius * (1 + 1e-6)
    # Uniform in a 2-D ball: P(r ≤ R/√2) = ½; a uniform radius: P(r ≤ R/2) = ½.
    # Binomial error of 1000 draws: √(¼/1000) ≈ 0.016, 4 of them 0.064.
    inside_half_area = ((shell - center).norm(dim=1) <= radius / math.sqrt(2)).float().mean()
    inside_half_radius = ((interior - center).norm(dim=1) <= radius / 2).float().mean()
    assert float(inside_half_area) == pytest.approx(0.5, abs=0.064)
    assert float(inside_half_radius) == pytest.approx(0.5, abs=0.064)
    # Noised rows: ‖u − x‖ = σ'‖ε‖ with σ' ≤ 2, below 12 unless the 2-D ‖ε‖ > 6
    # (probability e^(−18)).
    distance = (noised - batch[:1000]).norm(dim=1)
    assert float(distance.min()) > 0 and float(distance.max()) < 12
    # Blends of identical rows are that row.
    torch.testing.assert_close(blends, batch[:1000])


def test_arguments_are_checked():
    model = from_energy(point_data_energy, 2, name="point", noise_conditioned=True)
    batch = torch.zeros(8, 2)
    with pytest.raises(ArgumentError, match="sigma_min"):
        off_data_margin(model, batch, center=torch.zeros(2), radius=1.0, data_noise=0.0,
                        sigma_min=0.5, sigma_max=0.1)
    with pytest.raises(ArgumentError, match="data_noise"):
        off_data_margin(model, batch, center=torch.zeros(2), radius=1.0, data_noise=-1.0)
    with pytest.raises(ArgumentError, match="at least 4 rows"):
        off_data_points(torch.zeros(3, 2), torch.zeros(2), 1.0)
