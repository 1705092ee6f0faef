"""The shipped face models (trained by scripts/train_zoo.py) sample their attributes.

Each test loads shipped weights, draws 64 samples with the library's annealed
Langevin sampler using the settings recorded in the model card, and reads
the attributes with the exact detectors of ``ebmalgebra.datasets.faces``.

Tolerances: with 64 samples a binomial rate has standard error ≤ 0.0625.
The models reach ≈ 100% for their own attribute on 256 samples, so ≥ 90% is
a loose bound. An attribute the model was not conditioned on has data rate
0.5; on 256 samples the models give 44–64% (the hat model over-produces
glasses at ≈ 60%), so it must land in [0.25, 0.8] (≥ 3 standard errors
around the measured rates). Realism (distance to the nearest real face below
the calibrated threshold) is 88–95% on 256 samples; ≥ 75% leaves ≈ 3
standard errors. ``glasses & hat`` measured 100% both and 100% realistic.
"""

import math

import pytest
import torch

from ebmalgebra import zoo
from ebmalgebra.datasets import faces
from ebmalgebra.samplers import AnnealedLangevin, sample

pytestmark = pytest.mark.slow

N_SAMPLES = 64


def draw(model, names, *, exponent: float = 1.0, seed: int = 0) -> torch.Tensor:
    settings = zoo.card(names[0])["sampling"]
    levels = torch.logspace(math.log10(settings["sigma_max"]), math.log10(settings["sigma_min"]),
                            settings["n_levels"]).tolist()
    # A product of k energies is k times as curved: divide the step by k.
    sampler = AnnealedLangevin(noise_levels=levels, steps_per_level=settings["steps_per_level"],
                               step_size=settings["step_size"] / exponent,
                               mala=settings["mala_below"])
    generator = torch.Generator().manual_seed(seed)
    x0 = settings["sigma_max"] * torch.randn(N_SAMPLES, 16, 16, generator=generator)
    return sample(model, sampler, x0=x0, n_steps=1, warmup=sampler.n_annealing_steps - 1,
                  generator=generator, progress=False).draws[-1]


@pytest.mark.parametrize(("name", "other"), [("glasses", "hat"), ("hat", "glasses")])
def test_face_model_samples_have_its_attribute_and_random_others(name, other):
    torch.set_num_threads(1)
    samples = draw(zoo.load(name), [name])
    rates = {key: float(flags.float().mean()) for key, flags in faces.attributes(samples).items()}
    realistic = float(faces.is_realistic(samples).float().mean())
    assert rates[name] >= 0.9, rates
    assert 0.25 <= rates[other] <= 0.8, rates
    assert realistic >= 0.75, realistic


def test_glasses_and_hat_compose_into_both():
    torch.set_num_threads(1)
    samples = draw(zoo.load("glasses") & zoo.load("hat"), ["glasses", "hat"], exponent=2.0)
    found = faces.attributes(samples)
    both = float((found["glasses"] & found["hat"]).float().mean())
    assert both >= 0.9, both
    assert float(faces.is_realistic(samples).float().mean()) >= 0.6
