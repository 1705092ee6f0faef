"""ebmalgebra.threads: one thread inside library calls on small batches, the user's setting kept."""

from __future__ import annotations

import pytest
import torch

import ebmalgebra as eb
from ebmalgebra import threads
from ebmalgebra.learning import GaussianEnergy, as_model, fit, score_matching
from ebmalgebra.samplers import MALA
from ebmalgebra.targets import Gaussian

TORCH_DEFAULT = 2  # what torch picks on a 2-core machine; the suite itself runs on 1


@pytest.fixture
def torch_default(monkeypatch):
    """A process whose thread count is still torch's default, TORCH_DEFAULT."""
    for name in (threads.ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", TORCH_DEFAULT)
    before = torch.get_num_threads()
    torch.set_num_threads(TORCH_DEFAULT)
    yield
    torch.set_num_threads(before)


def test_small_batches_get_one_thread_at_torchs_default(torch_default):
    assert threads.policy_threads(64 * 256) == 1
    assert threads.policy_threads(threads.SMALL_BATCH + 1) is None


def test_a_count_the_user_chose_is_kept(torch_default, monkeypatch):
    torch.set_num_threads(TORCH_DEFAULT + 1)  # chosen in the program
    assert threads.policy_threads(10) is None
    torch.set_num_threads(TORCH_DEFAULT)
    monkeypatch.setenv("OMP_NUM_THREADS", str(TORCH_DEFAULT))  # chosen in the environment
    assert threads.policy_threads(10) is None


def test_the_environment_variable_overrides_the_policy(torch_default, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.policy_threads(threads.SMALL_BATCH * 8) == 3
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.policy_threads(10) is None
    monkeypatch.setenv(threads.ENV, "0")
    with pytest.raises(ValueError, match="EBMALGEBRA_THREADS='0'"):
        threads.policy_threads(10)


def test_sample_runs_on_one_thread_and_restores_the_count(torch_default):
    seen = []
    eb.sample(Gaussian(torch.zeros(2), 1.0), MALA(step_size=0.5), n_chains=16, n_steps=5,
              generator=torch.Generator().manual_seed(0),
              callback=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [1] * 5
    assert torch.get_num_threads() == TORCH_DEFAULT


def test_fit_runs_on_one_thread_and_restores_the_count_even_on_error(torch_default):
    seen = []
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    model = as_model(GaussianEnergy(2), name="g")

    def record(step: int, loss: float) -> bool:
        seen.append(torch.get_num_threads())
        if step == 3:
            raise KeyboardInterrupt  # a user's interrupt must not leave one thread behind
        return False

    with pytest.raises(KeyboardInterrupt):
        fit(model, data, score_matching, batch_size=16, callback=record)
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == TORCH_DEFAULT


def test_call_threads_applies_the_env_override_and_restores(torch_default, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    with threads.call_threads(10):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == TORCH_DEFAULT


@pytest.mark.parametrize("method", ["ais", "smc"])
def test_log_z_estimation_runs_on_one_thread_and_restores_the_count(torch_default, method):
    seen = []
    model = eb.from_energy(lambda x: (seen.append(torch.get_num_threads()),
                                      0.5 * (x * x).sum(-1))[1], 2, name="quad")
    eb.estimate_log_z(model, n_particles=32, n_temps=3, n_steps=2, method=method,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == TORCH_DEFAULT
