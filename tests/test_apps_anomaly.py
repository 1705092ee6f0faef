"""ebmalgebra.apps.anomaly: energy scores, likelihood ratios, ROC-AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ebmalgebra as eb
from ebmalgebra.apps import pretrained
from ebmalgebra.apps.anomaly import (
    LikelihoodRatioDetector,
    energy_score,
    plot_roc,
    roc_auc,
    roc_curve,
)
from ebmalgebra.targets import Gaussian


def brute_force_auc(inliers, outliers) -> float:
    inliers, outliers = np.asarray(inliers)[:, None], np.asarray(outliers)[None, :]
    return float((outliers > inliers).mean() + 0.5 * (outliers == inliers).mean())


def test_roc_auc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        inliers = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
        outliers = rng.integers(2, 8, rng.integers(1, 40)).astype(float)
        assert roc_auc(inliers, outliers) == pytest.approx(brute_force_auc(inliers, outliers))
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert roc_auc([0.0], [np.inf]) == 1.0


@pytest.mark.parametrize("function", [roc_auc, roc_curve])
def test_roc_needs_one_dimensional_scores(function):
    # A (3, 2) score would otherwise be flattened and ranked as six samples.
    with pytest.raises(ValueError, match=r"inlier_scores must be 1-D.*\(3, 2\)"):
        function(torch.zeros(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match=r"outlier_scores must be 1-D.*\(3, 2\)"):
        function(torch.zeros(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"outlier_scores must be 1-D.*\(\)"):
        function([0.0, 1.0], 2.0)


def test_roc_curve_has_the_same_area():
    rng = np.random.default_rng(1)
    inliers, outliers = rng.normal(size=300), rng.normal(1.0, size=200)
    fpr, tpr, thresholds = roc_curve(inliers, outliers)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(inliers, outliers))


def test_roc_curve_with_infinite_scores_keeps_thresholds_strictly_decreasing():
    inliers, outliers = np.array([-np.inf, 0.0, 1.0]), np.array([1.0, np.inf, np.inf])
    fpr, tpr, thresholds = roc_curve(inliers, outliers)
    assert np.all(np.diff(thresholds) < 0)
    # (0, 0) stands for "nothing flagged"; every later point is "score ≥ threshold".
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert thresholds[1] == np.finfo(np.float64).max
    for k in range(1, len(thresholds)):
        assert fpr[k] == np.mean(inliers >= thresholds[k])
        assert tpr[k] == np.mean(outliers >= thresholds[k])
    assert (fpr[1], tpr[1]) == (0.0, 2 / 3) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(inliers, outliers))


def test_bad_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="empty"):
        roc_auc([], [1.0])


def test_likelihood_ratio_is_the_energy_of_model_and_not_reference():
    model = Gaussian(torch.zeros(3), 1.0, name="model")
    reference = Gaussian(torch.ones(3), 2.0, name="reference")
    detector = LikelihoodRatioDetector(model, reference)
    assert repr(detector.expression) == "model & ~reference"
    x = torch.randn(10, 3)
    # Both are normalised, so the score is exactly log p_ref(x) − log p_model(x).
    torch.testing.assert_close(detector.score(x), reference.log_prob(x) - model.log_prob(x))
    torch.testing.assert_close(energy_score(model, x), model.energy(x))


def test_per_input_noise_levels_are_chunked_with_x():
    """More inputs than one evaluation chunk (2048), each with its own t."""
    model = eb.from_energy(lambda x, t: 0.5 * (x**2).sum(1) / (1 + t**2), 2, name="smoothed",
                           noise_conditioned=True)
    x = torch.randn(2500, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 2.0, 2500)
    torch.testing.assert_close(energy_score(model, x, t=t), model.energy(x, t))
    detector = LikelihoodRatioDetector(model, Gaussian(torch.zeros(2), 2.0), t=t)
    torch.testing.assert_close(detector.score(x), model.energy(x, t) - detector.reference.energy(x))
    with pytest.raises(eb.CompositionError, match=r"t must be a scalar or shaped like x's batch "
                                                  r"\(2500,\); got \(30,\)"):
        energy_score(model, x, t=t[:30])


def test_energy_score_needs_a_batch_tensor():
    model = Gaussian(torch.zeros(3), 1.0)
    with pytest.raises(eb.CompositionError, match=r"x must be a batch .* got shape \(3,\)"):
        energy_score(model, torch.zeros(3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        energy_score(model, np.zeros((4, 3), dtype=np.float32))


def test_ranking_ignores_the_normalisers():
    """Weights change Z (E − log w) but not the ranking: the AUC is the same."""
    model, reference = Gaussian(torch.zeros(2), 1.0), Gaussian(torch.zeros(2), 3.0)
    inliers = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    outliers = 2.5 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    plain = LikelihoodRatioDetector(model, reference)
    scaled = LikelihoodRatioDetector(7.0 * model, 0.01 * reference)
    assert roc_auc(plain.score(inliers), plain.score(outliers)) == roc_auc(
        scaled.score(inliers), scaled.score(outliers))


def test_detector_errors():
    with pytest.raises(eb.CompositionError, match="event shapes differ"):
        LikelihoodRatioDetector(Gaussian(torch.zeros(2), 1.0), Gaussian(torch.zeros(3), 1.0))
    with pytest.raises(TypeError, match="reference must be an EnergyModel"):
        LikelihoodRatioDetector(Gaussian(torch.zeros(2), 1.0), "gaussian")


def test_plot_roc_writes_a_png(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "roc.png"
    ax = plot_roc({"a": (rng.normal(size=50), rng.normal(1, size=50))}, path=path, title="t")
    assert "AUC" in ax.get_legend().get_texts()[0].get_text()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------- shipped models
def test_digits_anomaly_aucs():
    """Thresholds sit below what two training seeds measure (docs/applications.md): the
    shipped seed gives ≥ 0.997 on the three easy sets and 0.966 (ratio) vs 0.896 (energy) on
    dimmed digits; a second seed 0.994 and 0.938 vs 0.907. Easy sets: > 0.97, more than 8
    Hanley–McNeil standard errors (~0.003) below. Dimmed digits: ratio > 0.93 and at least
    0.02 above the energy (the smaller seed's gain was 0.031, one standard error of the
    difference ≈ 0.02 above that margin). With the shipped weights and fixed seeds the test
    is deterministic."""
    from ebmalgebra.datasets import digits

    model, background = pretrained.load("digits_0to4"), pretrained.load("digits_0to4_background")
    t = 0.1
    inliers = digits(classes=range(5), split="test")
    outlier_sets = {
        "digits 5-9": digits(classes=range(5, 10), split="test"),
        "uniform noise": torch.rand(355, 8, 8, generator=torch.Generator().manual_seed(1)),
        "inverted": 1.0 - inliers,
        "dimmed": 0.5 * inliers,
    }
    detector = LikelihoodRatioDetector(model, background, t=t)
    raw = {name: roc_auc(energy_score(model, inliers, t=t), energy_score(model, x, t=t))
           for name, x in outlier_sets.items()}
    ratio = {name: roc_auc(detector.score(inliers), detector.score(x))
             for name, x in outlier_sets.items()}
    for name in ("digits 5-9", "uniform noise", "inverted"):
        assert raw[name] > 0.97, (name, raw[name])
        assert ratio[name] > 0.97, (name, ratio[name])
    assert ratio["dimmed"] > 0.93
    assert ratio["dimmed"] > raw["dimmed"] + 0.02
