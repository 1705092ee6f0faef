"""`import ebmalgebra`: light to import, with samplers and subpackages reachable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ebmalgebra
from ebmalgebra import samplers

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) from the repository root."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"OMP_NUM_THREADS": "1",
                                                        "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_bare_import_loads_no_heavy_subpackage():
    heavy = ["ebmalgebra.apps", "ebmalgebra.zoo", "ebmalgebra.datasets", "ebmalgebra.learning",
             "scipy", "sklearn", "matplotlib"]
    out = run_python("import sys, ebmalgebra\n"
                     f"print([m for m in {heavy!r} if m in sys.modules])")
    assert out.strip() == "[]"


def test_subpackages_load_on_first_access_after_a_bare_import():
    out = run_python("import ebmalgebra\n"
                     "print(ebmalgebra.zoo.__name__, ebmalgebra.learning.fit.__module__,\n"
                     "      ebmalgebra.datasets.moons.__name__, ebmalgebra.apps.anomaly.__name__,\n"
                     "      ebmalgebra.ClassifierEnergy.__module__)")
    assert out.split() == ["ebmalgebra.zoo", "ebmalgebra.learning.fit", "moons",
                           "ebmalgebra.apps.anomaly", "ebmalgebra.apps.guidance"]


def test_every_sampler_name_is_reachable_from_the_top_level():
    for name in samplers.__all__:
        assert getattr(ebmalgebra, name) is getattr(samplers, name)
        assert name in dir(ebmalgebra)
    assert ebmalgebra.HMC is samplers.HMC and ebmalgebra.RandomWalkMH is samplers.RandomWalkMH


def test_an_unknown_attribute_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_name"):
        ebmalgebra.no_such_name  # noqa: B018 - the attribute access is the test


def test_a_file_with_an_application_leaf_loads_in_a_fresh_process(tmp_path):
    # Saving imports the apps; loading must work where nothing imported them yet.
    import torch

    from ebmalgebra.apps.likelihood import GaussianLikelihood
    from ebmalgebra.targets import Gaussian

    path = tmp_path / "posterior.safetensors"
    ebmalgebra.save(Gaussian(torch.zeros(2), 1.0) & GaussianLikelihood(torch.ones(2), 0.5),
                    path)
    out = run_python(f"import ebmalgebra\nprint(type(ebmalgebra.load({str(path)!r})"
                     ".operands()[1]).__name__)")
    assert out.strip() == "GaussianLikelihood"
