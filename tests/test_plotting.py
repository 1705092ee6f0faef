"""ebmalgebra.plotting: pictures of samples, and refusing formats matplotlib cannot write."""

from __future__ import annotations

import pytest
import torch

from ebmalgebra.plotting import (
    check_picture_path,
    image_rows,
    picture_formats,
    samples_figure,
    save_figure,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_picture_formats_are_matplotlibs():
    formats = picture_formats()
    assert {".png", ".pdf", ".svg"} <= set(formats)
    assert ".txt" not in formats and ".safetensors" not in formats


@pytest.mark.parametrize("name", ["samples.txt", "samples", "grid.safetensors"])
def test_an_unwritable_suffix_is_refused_naming_the_argument(tmp_path, name):
    with pytest.raises(ValueError, match=r"out '.*': cannot write a picture .*\.png"):
        check_picture_path(tmp_path / name, "out")


@pytest.mark.parametrize("shape", [(5, 16, 16), (7, 2)])
def test_samples_figure_draws_images_and_points(tmp_path, shape):
    samples = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    path = save_figure(samples_figure(samples, "title"), tmp_path / "deep" / "grid.png")
    assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("samples", [torch.rand(0, 16, 16), torch.rand(5, 2).bfloat16(),
                                     torch.rand(3, 8, 8).bfloat16()],
                         ids=["no images", "bfloat16 points", "bfloat16 images"])
def test_samples_figure_of_empty_or_bfloat16_samples(tmp_path, samples):
    # Regression: no images divided by zero columns; bfloat16 failed in .numpy().
    path = save_figure(samples_figure(samples, "title"), tmp_path / "grid.png")
    assert path.read_bytes()[:8] == PNG


def test_samples_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        samples_figure(torch.zeros(4, 3), "title")


def test_image_rows_labels_each_row(tmp_path):
    from matplotlib.figure import Figure

    figure = Figure()
    image_rows(figure, [("first", torch.rand(3, 8, 8)), ("second", torch.rand(1, 8, 8))], 3)
    labels = [axis.get_ylabel() for axis in figure.axes if axis.get_ylabel()]
    assert labels == ["first", "second"] and len(figure.axes) == 6
