"""The fit loop: reproducibility, history, callbacks, validation."""

from functools import partial

import pytest
import torch

from ebmalgebra import CompositionError, from_energy, targets
from ebmalgebra.learning import GaussianEnergy, History, as_model, fit, score_matching


def gaussian_model():
    net = GaussianEnergy(2)
    return net, as_model(net, name="gaussian")


def data(n=256, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 0.5 + 1.0


def test_fit_is_reproducible_with_a_seeded_generator():
    losses = []
    for _ in range(2):
        _, model = gaussian_model()
        history = fit(model, data(), partial(score_matching, method="sliced"), epochs=3,
                      batch_size=64, generator=torch.Generator().manual_seed(3), progress=False)
        losses.append(history.losses)
    assert losses[0] == losses[1]


def test_history_records_every_step_and_plots(tmp_path):
    _, model = gaussian_model()
    path = tmp_path / "loss.png"
    history = fit(model, data(250), partial(score_matching, method="exact"), epochs=2,
                  batch_size=100, progress=False, plot=path)
    assert isinstance(history, History)
    assert history.steps == 6 and history.epochs == 2  # ceil(250 / 100) = 3 per epoch
    assert history.seconds > 0 and path.stat().st_size > 0
    assert len(history.smoothed(4)) == 6


def test_callback_can_stop_training():
    _, model = gaussian_model()
    seen = []

    def callback(step, loss):
        seen.append((step, loss))
        return step == 3

    history = fit(model, data(), partial(score_matching, method="exact"), epochs=5,
                  batch_size=32, callback=callback, progress=False)
    assert history.stopped_early and history.steps == 3
    assert [s for s, _ in seen] == [1, 2, 3]


def test_fit_trains_with_a_given_optimizer_and_clipping():
    net, model = gaussian_model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    fit(model, data(), partial(score_matching, method="exact"), epochs=30, batch_size=256,
        optimizer=optimizer, max_grad_norm=10.0, progress=False)
    torch.testing.assert_close(net.loc.detach(), data().mean(0), atol=0.05, rtol=0)


def test_fit_validates_its_inputs():
    _, model = gaussian_model()
    loss = partial(score_matching, method="exact")
    with pytest.raises(CompositionError, match=r"event_shape \(2,\).*\(n, 2\).*\(10, 3\)"):
        fit(model, torch.zeros(10, 3), loss)
    with pytest.raises(ValueError, match="non-finite.*sample 4"):
        bad = data(10)
        bad[4, 1] = float("inf")
        fit(model, bad, loss)
    with pytest.raises(TypeError, match="floating point"):
        fit(model, torch.zeros(10, 2, dtype=torch.int64), loss)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, data(), loss, epochs=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(targets.Gaussian(torch.zeros(2), 1.0), data(), loss)
    with pytest.raises(TypeError, match="as_model"):
        fit(GaussianEnergy(2), data(), loss)


def test_fit_reports_a_non_finite_loss_with_its_step():
    model = from_energy(torch.nn.Linear(2, 1), 2, name="linear")

    def exploding(model, batch, generator=None):
        return model.energy(batch).mean() * float("nan")

    with pytest.raises(FloatingPointError, match=r"step 1 \(epoch 1\)"):
        fit(model, data(), exploding, progress=False)


def test_a_non_finite_loss_is_reported_at_the_step_the_callback_would_have_seen():
    # Steps count from 1 for the callback, so the error must too: NaN on the third step.
    model = from_energy(torch.nn.Linear(2, 1), 2, name="linear")
    calls, seen = [], []

    def nan_on_third_call(model, batch, generator=None):
        calls.append(None)
        return model.energy(batch).mean() * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(FloatingPointError, match=r"at step 3 \(epoch 1\)"):
        fit(model, data(), nan_on_third_call, batch_size=32, progress=False,
            callback=lambda step, loss: seen.append(step))
    assert seen == [1, 2]


def parameters_of(net):
    return [p.detach().clone() for p in net.parameters()]


def assert_unchanged(net, before):
    for p, q in zip(net.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)


@pytest.mark.parametrize("max_grad_norm, error, constraint", [
    (-1.0, ValueError, "positive"), (0.0, ValueError, "positive"),
    (float("nan"), ValueError, "finite"), (-float("inf"), ValueError, "finite"),
    ("1", TypeError, "a real number"),  # a string is the wrong type, as in math.sqrt("1")
])
def test_fit_rejects_a_max_grad_norm_that_is_not_positive_and_finite(max_grad_norm, error,
                                                                     constraint):
    # A negative norm would flip every gradient (clip_grad_norm_ scales by max/‖g‖).
    net, model = gaussian_model()
    before = parameters_of(net)
    with pytest.raises(error, match=f"fit: max_grad_norm must be {constraint}"):
        fit(model, data(), partial(score_matching, method="exact"), progress=False,
            max_grad_norm=max_grad_norm)
    assert_unchanged(net, before)


def test_fit_with_an_infinite_max_grad_norm_never_clips():
    losses = []
    for max_grad_norm in (None, float("inf")):
        torch.manual_seed(0)
        _, model = gaussian_model()
        history = fit(model, data(), partial(score_matching, method="exact"), progress=False,
                      max_grad_norm=max_grad_norm, generator=torch.Generator().manual_seed(0))
        losses.append(history.losses)
    assert losses[0] == losses[1]


def test_fit_rejects_a_scheduler_of_another_optimizer():
    net, model = gaussian_model()
    loss = partial(score_matching, method="exact")
    other = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(other, 1)
    before = parameters_of(net)
    with pytest.raises(ValueError, match="scheduler needs the optimizer it was built on"):
        fit(model, data(), loss, scheduler=scheduler, progress=False)
    with pytest.raises(ValueError, match="scheduler was built on a different optimizer"):
        fit(model, data(), loss, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            scheduler=scheduler, progress=False)
    assert_unchanged(net, before)
    fit(model, data(), loss, optimizer=other, scheduler=scheduler, progress=False)
    assert other.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1**2)  # 2 steps of StepLR(γ=0.1)


@pytest.mark.parametrize("generator", ["abc", 0, torch.zeros(1)])
def test_fit_rejects_a_generator_that_is_not_a_torch_generator(generator):
    _, model = gaussian_model()
    with pytest.raises(TypeError, match="fit: generator must be a torch.Generator or None"):
        fit(model, data(), partial(score_matching, method="exact"), generator=generator,
            progress=False)


def test_fit_checks_the_callback_before_any_step():
    net, model = gaussian_model()
    before = parameters_of(net)
    with pytest.raises(TypeError, match="callback must be callable"):
        fit(model, data(), partial(score_matching, method="exact"), callback=3, progress=False)
    assert_unchanged(net, before)


def test_fit_checks_the_plot_path_before_any_step():
    # Regression: a path matplotlib cannot write was found only after training.
    net, model = gaussian_model()
    before = parameters_of(net)
    with pytest.raises(ValueError, match=r"fit: plot .*'\.txt'"):
        fit(model, data(), partial(score_matching, method="exact"), plot="loss.txt",
            progress=False)
    assert_unchanged(net, before)


def test_the_error_that_stops_training_is_not_hidden_by_the_plot(tmp_path, monkeypatch):
    # Regression: the plot in fit's `finally` ran during the exception and a failure there
    # replaced the error that had stopped training.
    _, model = gaussian_model()
    monkeypatch.setattr(History, "plot", lambda self, path: 1 / 0)
    calls = []

    def failing(model, batch, generator=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("the loss failed")
        return score_matching(model, batch, method="exact")

    with pytest.raises(KeyError, match="the loss failed"):
        fit(model, data(), failing, batch_size=32, plot=tmp_path / "loss.png", progress=False)


def test_a_stop_on_the_last_step_of_an_epoch_counts_the_epoch():
    # Regression: history.epochs stayed 0 though the callback stopped after a whole epoch.
    _, model = gaussian_model()
    history = fit(model, data(256), partial(score_matching, method="exact"), epochs=3,
                  batch_size=128, callback=lambda step, loss: step == 2, progress=False)
    assert history.stopped_early and history.steps == 2 and history.epochs == 1
    history = fit(model, data(256), partial(score_matching, method="exact"), epochs=3,
                  batch_size=128, callback=lambda step, loss: step == 3, progress=False)
    assert history.steps == 3 and history.epochs == 1


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_history_smoothing_window_must_be_a_positive_int(window):
    history = History(losses=[1.0, 2.0, 3.0])
    assert history.smoothed(2) == [1.0, 1.5, 2.5]
    with pytest.raises(ValueError, match="History.smoothed: window must be a positive int"):
        history.smoothed(window)
    with pytest.raises(ValueError, match="History.plot: window must be a positive int"):
        history.plot(window=window)


class _NoiseConditionedGaussian(torch.nn.Module):
    """E(x, t) = ‖x − μ‖² / (2(1 + t²)) with a learnable μ; t has shape (batch,)."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x, t):
        return 0.5 * (x - self.loc).square().sum(-1) / (1.0 + torch.as_tensor(t) ** 2)


def _documented_losses():
    """Every loss exported by ebmalgebra.learning, with only its required options bound."""
    from ebmalgebra import learning
    from ebmalgebra.samplers import ULA

    gaussian = lambda: gaussian_model()  # noqa: E731
    noisy = lambda: (net := _NoiseConditionedGaussian(),  # noqa: E731
                     from_energy(net, 2, name="noisy", noise_conditioned=True))
    return [
        ("score_matching", learning.score_matching, gaussian),
        ("exact_score_matching", learning.exact_score_matching, gaussian),
        ("sliced_score_matching", learning.sliced_score_matching, gaussian),
        ("denoising_score_matching", learning.denoising_score_matching, gaussian),
        ("multi_noise_dsm", learning.multi_noise_dsm, noisy),
        ("contrastive_divergence",
         partial(learning.contrastive_divergence, sampler=ULA(step_size=0.01), n_steps=2),
         gaussian),
    ]


def test_the_documented_losses_are_all_listed_here():
    from ebmalgebra import learning

    documented = {name for name in learning.__all__
                  if "matching" in name or name in ("multi_noise_dsm", "contrastive_divergence")}
    assert documented == {name for name, _, _ in _documented_losses()}


@pytest.mark.parametrize(("name", "loss", "make_model"), _documented_losses(),
                         ids=[name for name, _, _ in _documented_losses()])
def test_every_documented_loss_trains_through_fit_as_is(name, loss, make_model):
    # fit calls loss(model, batch, generator=...): each loss must accept that call.
    net, model = make_model()
    before = parameters_of(net)
    history = fit(model, data(64), loss, epochs=1, batch_size=64,
                  generator=torch.Generator().manual_seed(0), progress=False)
    assert history.steps == 1 and torch.isfinite(torch.tensor(history.losses)).all()
    assert any(not torch.equal(p.detach(), q) for p, q in zip(net.parameters(), before,
                                                              strict=True))
