"""Procedural 16×16 grayscale faces with three attributes and exact detectors.

The point of this data set is that composition success becomes a number: a
sample from ``glasses & hat`` either shows dark glasses and a hat or it does
not, :meth:`Faces.attributes` says which, and :meth:`Faces.is_realistic` says
whether the sample looks like a face at all (detectors also fire on garbage).

Layout. Pixel (i, j) is row i (top to bottom), column j. Each face has an
integer axis a = 8 + Δx (features are mirror-symmetric about the line between
columns a − 1 and a) and an eye row r_e = 6 + Δy, with the jitter Δx, Δy
uniform on {−1, 0, 1}. Features are given as (row − r_e, column − a) offsets:

==========  =============================================================
background  tone ~ U[0, 0.15]
head        ellipse centred 2.5 rows below r_e on the axis, radii
            r_x ~ U[4.8, 5.6], r_y ~ U[5.3, 6.0], skin tone s ~ U[0.55,
            0.85], edge anti-aliased over one pixel
hair        head pixels at row offsets ≤ −2, tone ~ U[0.15, 0.45]
eyes        (0, −3), (0, 2); tone ~ U[0, 0.2]
nose        (2, −1), (2, 0); tone s − 0.12
mouth       tone ~ U[0, 0.2]. Straight: row 4, columns −4 … 3.
            Smile: row 4, columns −2 … 1, corners raised to row 3,
            columns −4, −3, 2, 3
glasses     lenses rows 0 … 1, columns −4 … −2 and 1 … 3, bridge (0, −1),
            (0, 0); tone ~ U[0, 0.1]
hat         crown from the top row down to row −4, columns −4 … 3; brim
            row −3, columns −5 … 4; tone ~ U[0.9, 1.0]
==========  =============================================================

Finally i.i.d. N(0, noise²) pixel noise is added. Values are not clipped:
clean pixels lie in [0, 1] and noisy ones stray by a few ``noise``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ebmalgebra.datasets.toys import (
    _check_dtype,
    _check_n,
    _check_nonnegative,
    _draw_device,
    _finish,
)
from ebmalgebra.errors import ArgumentError, ArgumentTypeError

__all__ = ["ATTRIBUTES", "IMAGE_SHAPE", "Faces", "faces"]

IMAGE_SHAPE: tuple[int, int] = (16, 16)
ATTRIBUTES: tuple[str, ...] = ("glasses", "hat", "smile")

_SIZE = IMAGE_SHAPE[0]
_AXIS = 8
_EYE_ROW = 6
_JITTER = 1

# Feature cells as (row offset from r_e, column offset from a); see the table.
_EYES = ((0, -3), (0, 2))
_NOSE = ((2, -1), (2, 0))
_STRAIGHT_MOUTH = tuple((4, c) for c in range(-4, 4))
_SMILE_CORNER_COLUMNS = (-4, -3, 2, 3)
_SMILE = tuple((4, c) for c in range(-2, 2)) + tuple((3, c) for c in _SMILE_CORNER_COLUMNS)
_GLASSES = tuple((0, c) for c in range(-4, 4)) + tuple((1, c) for c in (-4, -3, -2, 1, 2, 3))
_MOUTH_OFFSET = 4

# Detector cut-offs on the tone scale background = 0, skin = 1, measured on
# generated faces: the two-row glasses band is ≤ 0.3 with glasses and ≥ 0.8
# without (noise ≤ 0.06); the two top rows are ≥ 0.9 under a hat and ≤ 0.2
# without one. Cuts sit in the gaps, nearer the side that noise pushes toward.
_GLASSES_CUT = 0.6
_HAT_CUT = 0.5

# Realism: a bank of clean faces and a held-out calibration set, each from its
# own fixed seed, so every process computes the same threshold.
_BANK_SIZE = 8192
_BANK_SEED = 20261125
_CALIBRATION_SIZE = 4000
_CALIBRATION_SEED = 20261126
_CALIBRATION_NOISE = 0.06
_CALIBRATION_QUANTILE = 0.99


def _attribute_flags(
    name: str, value: object, n: int, generator: torch.Generator | None, where: torch.device
) -> Tensor:
    """Resolve an attribute argument: True/False fixes it, None draws Bernoulli(½)."""
    if value is None:
        return torch.rand(n, generator=generator, device=where) < 0.5
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True, False or None, got {value!r}")
    return torch.full((n,), value, dtype=torch.bool, device=where)


def _cells(row: Tensor, col: Tensor, cells: Iterable[tuple[int, int]]) -> Tensor:
    """Mask of the pixels whose (row, col) offsets are among ``cells``."""
    shape = torch.broadcast_shapes(row.shape, col.shape)
    mask = torch.zeros(shape, dtype=torch.bool, device=row.device)
    for dr, dc in cells:
        mask |= (row == dr) & (col == dc)
    return mask


def _render(
    glasses: Tensor,
    hat: Tensor,
    smile: Tensor,
    noise: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw one float32 face per flag, on the flags' device (see the module table)."""
    n, where = len(glasses), glasses.device

    def draw(low: float, high: float) -> Tensor:
        u = torch.rand(n, generator=generator, device=where)
        return (low + (high - low) * u)[:, None, None]

    shift_x = torch.randint(-_JITTER, _JITTER + 1, (n, 1, 1), generator=generator, device=where)
    shift_y = torch.randint(-_JITTER, _JITTER + 1, (n, 1, 1), generator=generator, device=where)
    background, skin, hair = draw(0.0, 0.15), draw(0.55, 0.85), draw(0.15, 0.45)
    eye_tone, mouth_tone = draw(0.0, 0.2), draw(0.0, 0.2)
    lens_tone, hat_tone = draw(0.0, 0.1), draw(0.9, 1.0)
    radius_x, radius_y = draw(4.8, 5.6), draw(5.3, 6.0)

    index = torch.arange(_SIZE, device=where)
    row = index[None, :, None] - (_EYE_ROW + shift_y)
    col = index[None, None, :] - (_AXIS + shift_x)
    # Pixel centres sit at +½; the head centre is 2.5 rows below the eye row on
    # the axis line (offset 0 between columns a − 1 and a). The radial
    # coordinate is turned into a rough signed distance in pixels, and a
    # one-pixel ramp around the outline anti-aliases the edge.
    radial = torch.sqrt(((col + 0.5) / radius_x) ** 2 + ((row - 2.0) / radius_y) ** 2)
    coverage = (0.5 - (radial - 1) * torch.sqrt(radius_x * radius_y)).clamp(0, 1)
    head = torch.where(row <= -2, hair, skin)
    image = background + coverage * (head - background)

    image = torch.where(_cells(row, col, _EYES), eye_tone, image)
    image = torch.where(_cells(row, col, _NOSE), skin - 0.12, image)
    mouth = torch.where(
        smile[:, None, None], _cells(row, col, _SMILE), _cells(row, col, _STRAIGHT_MOUTH)
    )
    image = torch.where(mouth, mouth_tone, image)
    image = torch.where(glasses[:, None, None] & _cells(row, col, _GLASSES), lens_tone, image)
    crown = (row <= -4) & (col >= -4) & (col <= 3)
    brim = (row == -3) & (col >= -5) & (col <= 4)
    image = torch.where(hat[:, None, None] & (crown | brim), hat_tone, image)

    if noise > 0:
        image = image + noise * torch.randn(image.shape, generator=generator, device=where)
    return image


def _as_images(x: object) -> Tensor:
    """Accept (n, 16, 16), (n, 1, 16, 16) or (n, 256) and return float (n, 16, 16).

    float32 and float64 are kept; integer, float16 and bfloat16 images become
    float32 (quantiles need it, and half precision would blur the cut-offs).
    """
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    pixels = _SIZE * _SIZE
    if x.ndim == 2 and x.shape[1] == pixels:
        images = x.reshape(-1, _SIZE, _SIZE)
    elif x.ndim == 3 and tuple(x.shape[1:]) == IMAGE_SHAPE:
        images = x
    elif x.ndim == 4 and x.shape[1] == 1 and tuple(x.shape[2:]) == IMAGE_SHAPE:
        images = x[:, 0]
    else:
        raise ArgumentError(
            f"x must have shape (n, 16, 16), (n, 1, 16, 16) or (n, 256), got {tuple(x.shape)}"
        )
    if images.dtype not in (torch.float32, torch.float64):
        images = images.float()
    return images.detach()


class _Landmarks:
    """Where the face is in each image and how bright it is, from the pixels alone.

    * Axis a: every drawn feature is mirror-symmetric about the line between
      columns a − 1 and a, so a is the candidate in 8 ± 2 minimising the mean
      squared difference between columns a + k and a − 1 − k (k = 0 … 5) over
      all rows. This uses eyes, mouth, hat and outline at once, and pixel
      noise adds the same expected amount to every candidate.
    * Mouth row r_m: among the rows r_e + 4 allowed by the jitter, the one
      where the central columns a − 2 … a + 1 (dark for both mouth shapes) are
      darkest relative to the rows just above and below, i.e. the most negative
      second difference. A second difference rather than plain darkness keeps
      lens pixels smeared by blur from looking like a mouth. Then r_e = r_m − 4.
    * Tones: background = mean of the four 2×2 image corners (never face);
      skin = 75th percentile of rows r_e − 1 and r_e + 2 … r_e + 5, columns
      a − 4 … a + 3: at most 10 of these 40 pixels are drawn features, and
      skipping the glasses band keeps the estimate up under blur.
    """

    def __init__(self, images: Tensor) -> None:
        self.images = images
        self.index = torch.arange(images.shape[0], device=images.device)
        self.axis = self._find_axis(images)

        central = self._columns(range(-2, 2))
        rows = torch.arange(_SIZE, device=images.device)
        profile = images[self.index[:, None, None], rows[None, :, None], central[:, None, :]]
        profile = profile.mean(dim=2)
        typical = _EYE_ROW + _MOUTH_OFFSET
        candidates = torch.arange(typical - _JITTER, typical + _JITTER + 1, device=images.device)
        above, below = profile[:, candidates - 1], profile[:, candidates + 1]
        line = profile[:, candidates] - (above + below) / 2
        self.eye_row = candidates[line.argmin(dim=1)] - _MOUTH_OFFSET

        corners = images[:, [0, 1, -2, -1]][:, :, [0, 1, -2, -1]]
        self.background = corners.flatten(1).mean(dim=1)
        face = self.region((-1, 2, 3, 4, 5), range(-4, 4)).flatten(1)
        # quantile rejects an empty input even when the reduced dimension is not empty
        self.skin = torch.quantile(face, 0.75, dim=1) if len(face) else face[:, 0]

    @staticmethod
    def _find_axis(images: Tensor) -> Tensor:
        first = _AXIS - 2 * _JITTER
        offsets = torch.arange(6, device=images.device)
        asymmetry = torch.stack(
            [
                (images[:, :, a + offsets] - images[:, :, a - 1 - offsets]).square().mean((1, 2))
                for a in range(first, _AXIS + 2 * _JITTER + 1)
            ],
            dim=1,
        )
        return first + asymmetry.argmin(dim=1)

    def _columns(self, offsets: Iterable[int]) -> Tensor:
        offsets = torch.as_tensor(list(offsets), device=self.axis.device)
        return (self.axis[:, None] + offsets[None, :]).clamp(0, _SIZE - 1)

    def region(
        self, row_offsets: Iterable[int], col_offsets: Iterable[int], *, from_eye: bool = True
    ) -> Tensor:
        """Pixels (n, rows, cols) at rows r_e + row_offsets and columns a + col_offsets.

        With ``from_eye=False`` the rows are absolute indices.
        """
        rows = torch.as_tensor(list(row_offsets), device=self.axis.device)[None, :]
        rows = self.eye_row[:, None] + rows if from_eye else rows.expand(len(self.axis), -1)
        rows = rows.clamp(0, _SIZE - 1)[:, :, None]
        return self.images[self.index[:, None, None], rows, self._columns(col_offsets)[:, None]]

    def relative(self, tone: Tensor) -> Tensor:
        """Tone (n,) on the scale background = 0, skin = 1; unchanged by x ↦ αx + β, α > 0."""
        return (tone - self.background) / (self.skin - self.background).clamp_min(1e-6)


class Faces:
    """Procedural 16×16 faces with attributes glasses, hat and smile.

    Call it to sample images; read attributes off any images of shape
    (n, 16, 16), (n, 1, 16, 16) or (n, 256) with :meth:`has_glasses`,
    :meth:`has_hat`, :meth:`has_smile` or :meth:`attributes`; check that they
    look like faces at all with :meth:`realism` / :meth:`is_realistic`.
    Images may have any real dtype (integer, float16 and bfloat16 ones are
    read in float32), and n may be 0.

    Example:
        >>> from ebmalgebra.datasets import faces
        >>> x = faces(64, glasses=True, generator=torch.Generator().manual_seed(0))
        >>> bool(faces.has_glasses(x).all()), faces.image_shape
        (True, (16, 16))
    """

    image_shape: tuple[int, int] = IMAGE_SHAPE
    attribute_names: tuple[str, ...] = ATTRIBUTES

    def __init__(self) -> None:
        self._banks: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._threshold: float | None = None

    def __repr__(self) -> str:
        return "faces"

    def __call__(
        self,
        n: int,
        *,
        glasses: bool | None = None,
        hat: bool | None = None,
        smile: bool | None = None,
        noise: float = 0.04,
        generator: torch.Generator | None = None,
        return_attributes: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Sample n faces; each attribute is fixed (True/False) or random (None).

        Procedure: see the module docstring. An attribute left as None is drawn
        from Bernoulli(½) independently per face; position (±1 pixel in x and
        y), head size, tones and pixel noise N(0, noise²) are random. Numbers
        are drawn in float32 on the generator's device (CPU without one).

        Returns images of shape (n, 16, 16) and, if ``return_attributes``, also a
        dict {"glasses", "hat", "smile"} of bool tensors of shape (n,).

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> x, attrs = faces(8, hat=True, return_attributes=True, generator=g)
            >>> x.shape, bool(attrs["hat"].all())
            (torch.Size([8, 16, 16]), True)
        """
        n = _check_n(n)
        dtype = _check_dtype(dtype)
        noise = _check_nonnegative("noise", noise)
        if not isinstance(return_attributes, bool):
            raise ArgumentTypeError(f"return_attributes must be a bool, got {return_attributes!r}")
        where = _draw_device(generator)
        flags = {
            "glasses": _attribute_flags("glasses", glasses, n, generator, where),
            "hat": _attribute_flags("hat", hat, n, generator, where),
            "smile": _attribute_flags("smile", smile, n, generator, where),
        }
        images = _finish(_render(**flags, noise=noise, generator=generator), dtype, device)
        if not return_attributes:
            return images
        return images, {name: flag.to(images.device) for name, flag in flags.items()}

    # -- attribute detectors ------------------------------------------------

    def has_glasses(self, x: Tensor) -> Tensor:
        """Whether each image shows dark glasses; x (n, 16, 16) → bool (n,).

        Rule: the mean of the two-row band r_e … r_e + 1, columns a − 4 … a + 3
        (lenses and bridge, 14 of 16 pixels dark) is below 0.6 on the tone
        scale background = 0, skin = 1. Without glasses the band is skin with
        two eye pixels. Landmarks a, r_e and both tones are found per image
        (see ``_Landmarks``), so the rule follows the position jitter and is
        unchanged by any contrast change x ↦ αx + β with α > 0.

        Example:
            >>> faces.has_glasses(faces(4, glasses=False)).any()
            tensor(False)
        """
        return self._glasses_score(_Landmarks(_as_images(x))) > 0

    def has_hat(self, x: Tensor) -> Tensor:
        """Whether each image shows a hat; x (n, 16, 16) → bool (n,).

        Rule: the mean of image rows 0 … 1, columns a − 3 … a + 2 is above 0.5
        on the tone scale background = 0, skin = 1. For every jitter these
        pixels are hat crown under a hat and background (at most a sliver of
        hair) without one.

        Example:
            >>> faces.has_hat(faces(4, hat=True)).all()
            tensor(True)
        """
        return self._hat_score(_Landmarks(_as_images(x))) > 0

    def has_smile(self, x: Tensor) -> Tensor:
        """Whether each image shows a smiling (curved) mouth; x (n, 16, 16) → bool (n,).

        Rule: let D(r) be the mean of row r over the corner columns a − 4,
        a − 3, a + 2, a + 3. A smile raises its corners to r_m − 1, so
        D(r_m − 1) < D(r_m); a straight mouth has them on r_m, so
        D(r_m) < D(r_m − 1). The sign of D(r_m) − D(r_m − 1) decides; no tone
        threshold is involved.

        Example:
            >>> faces.has_smile(faces(4, smile=True)).all()
            tensor(True)
        """
        return self._smile_score(_Landmarks(_as_images(x))) > 0

    def attributes(self, x: Tensor) -> dict[str, Tensor]:
        """All three detectors at once: {"glasses", "hat", "smile"} → bool (n,) each.

        Example:
            >>> sorted(faces.attributes(faces(2)))
            ['glasses', 'hat', 'smile']
        """
        marks = _Landmarks(_as_images(x))
        return {
            "glasses": self._glasses_score(marks) > 0,
            "hat": self._hat_score(marks) > 0,
            "smile": self._smile_score(marks) > 0,
        }

    @staticmethod
    def _glasses_score(marks: _Landmarks) -> Tensor:
        band = marks.region([0, 1], range(-4, 4)).mean(dim=(1, 2))
        return _GLASSES_CUT - marks.relative(band)

    @staticmethod
    def _hat_score(marks: _Landmarks) -> Tensor:
        crown = marks.region([0, 1], range(-3, 3), from_eye=False).mean(dim=(1, 2))
        return marks.relative(crown) - _HAT_CUT

    @staticmethod
    def _smile_score(marks: _Landmarks) -> Tensor:
        rows = (_MOUTH_OFFSET - 1, _MOUTH_OFFSET)
        corners = marks.region(rows, _SMILE_CORNER_COLUMNS).mean(dim=2)
        return corners[:, 1] - corners[:, 0]

    # -- realism ------------------------------------------------------------

    def realism(self, x: Tensor) -> Tensor:
        """Distance of each image to the nearest real face; x (n, 16, 16) → (n,).

        Both x and a fixed bank of 8,192 clean faces (fixed seed, built on first
        use and cached) are smoothed with the 3×3 binomial filter K = ¼[1 2 1] ⊗
        ¼[1 2 1], which divides i.i.d. pixel noise by about 2.7 while keeping
        the features; the score is the root-mean-square pixel difference to the
        nearest smoothed bank face,

            realism(x) = min_b ‖K∗x − K∗b‖₂ / 16.

        Lower is more face-like: real faces score ≈ 0.02–0.04, uniform noise
        and constant images ≥ 0.19. :meth:`is_realistic` applies the threshold.
        Scores have x's dtype (float32 for integer, float16 and bfloat16 x).

        Example:
            >>> bool(faces.realism(torch.rand(2, 16, 16)).min() > faces.realism_threshold)
            True
        """
        images = _as_images(x)
        bank = self._reference_bank(images.device, images.dtype)
        smoothed = _smooth(images).flatten(1)
        nearest = [torch.cdist(chunk, bank).amin(dim=1) for chunk in smoothed.split(1024)]
        return torch.cat(nearest) / _SIZE

    def is_realistic(self, x: Tensor) -> Tensor:
        """Whether each image is as close to a real face as real faces are; → bool (n,).

        True when :meth:`realism` ≤ :attr:`realism_threshold`, the 99th
        percentile of :meth:`realism` on 4,000 held-out faces (own fixed seed,
        random attributes, noise 0.06, the top of the supported noise range).
        Real faces with noise ≤ 0.06 therefore pass ≈ 99% of the time.

        Example:
            >>> faces.is_realistic(torch.zeros(1, 16, 16))
            tensor([False])
        """
        return self.realism(x) <= self.realism_threshold

    @property
    def realism_threshold(self) -> float:
        """The calibrated cut-off on :meth:`realism` used by :meth:`is_realistic`."""
        if self._threshold is None:
            generator = torch.Generator().manual_seed(_CALIBRATION_SEED)
            held_out = self(_CALIBRATION_SIZE, noise=_CALIBRATION_NOISE, generator=generator)
            scores = self.realism(held_out).double()
            self._threshold = float(torch.quantile(scores, _CALIBRATION_QUANTILE))
        return self._threshold

    def _reference_bank(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (torch.device("cpu"), torch.float32)
        if key not in self._banks:
            generator = torch.Generator().manual_seed(_BANK_SEED)
            clean = self(_BANK_SIZE, noise=0.0, generator=generator)
            self._banks[key] = _smooth(clean).flatten(1)
        if (device, dtype) not in self._banks:
            self._banks[device, dtype] = self._banks[key].to(device=device, dtype=dtype)
        return self._banks[device, dtype]


def _smooth(images: Tensor) -> Tensor:
    """3×3 binomial smoothing (¼[1 2 1] ⊗ ¼[1 2 1]) of (n, 16, 16) with replicated borders."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device) / 4
    kernel = (taps[:, None] * taps[None, :])[None, None]
    padded = torch.nn.functional.pad(images[:, None], (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel)[:, 0]


faces = Faces()
