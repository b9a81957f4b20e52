"""Property-based tests (hypothesis): window stitching, the geometry checks at the boundary,
and boxes through the preprocessing chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_stitching_is_the_weighted_mean_of_the_covering_windows(channels, gh, gw, cells, seed):
    from MammoPatchLib.inference import stitch_window_grid

    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(1, channels, gh, gw, generator=generator)
    kernel = torch.rand(cells, cells, generator=generator) + 0.05
    stitched = stitch_window_grid(probs, kernel)[0]
    total = torch.zeros(channels, gh + cells - 1, gw + cells - 1)
    weight = torch.zeros(gh + cells - 1, gw + cells - 1)
    for i in range(gh):
        for j in range(gw):
            total[:, i:i + cells, j:j + cells] += probs[0, :, i, j, None, None] * kernel
            weight[i:i + cells, j:j + cells] += kernel
    torch.testing.assert_close(stitched, total / weight, atol=1e-5, rtol=1e-5)
    assert float(stitched.min()) >= float(probs.min()) - 1e-6 and float(stitched.max()) <= float(probs.max()) + 1e-6


spacings = st.one_of(st.floats(1e-4, 100.0), st.sampled_from([0.0, -0.1, float("nan"), float("inf")]))


@settings(max_examples=200, deadline=None)
@given(spacings, spacings, st.integers(256, 4000), st.integers(256, 4000), st.floats(0.05, 2.0),
       st.sampled_from([None, 0.1, 0.2]), st.integers(10**8, 10**11))
def test_geometry_check_refuses_exactly_what_cannot_be_analysed(row, col, rows, cols, scale, target, memory):
    from MammoPatchLib.errors import InvalidImageError
    from MammoPatchLib.io.image import ImageGeometry, MammogramImage
    from MammoPatchLib.io.validate import (
        BYTES_PER_ANALYSED_PIXEL,
        MAX_SOURCE_PIXELS,
        MAX_SPACING_MM,
        MIN_SPACING_MM,
        check_geometry,
    )

    image = MammogramImage(pixels=np.zeros((rows, cols), np.float32), geometry=ImageGeometry(spacing=(col, row, 1.0)))
    usable = all(math.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in (row, col))
    if usable:
        effective = (target or 0.5 * (row + col)) * scale
        out_rows, out_cols = rows * row / effective, cols * col / effective
        usable = (rows * cols <= MAX_SOURCE_PIXELS and min(out_rows, out_cols) >= 64
                  and out_rows * out_cols * BYTES_PER_ANALYSED_PIXEL <= memory)
    if usable:
        check_geometry(image, target, (scale,), 256, memory_bytes=memory)
    else:
        with pytest.raises(InvalidImageError):
            check_geometry(image, target, (scale,), 256, memory_bytes=memory)


@settings(max_examples=12, deadline=None)
@given(st.floats(0.05, 0.3), st.sampled_from([None, 0.2, 0.15]), st.booleans(), st.integers(0, 2**31 - 1))
def test_boxes_go_through_the_preprocessing_chain_and_back(spacing, target, flip, seed):
    from MammoPatchLib.io.image import ImageGeometry, MammogramImage
    from MammoPatchLib.synthetic import synthesize_mammogram
    from MammoPatchLib.transforms import PreprocessConfig, preprocess

    mammo = synthesize_mammogram((384, 320), spacing, "R" if flip else "L", "CC", [], seed=seed % 1000)
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32),
                           geometry=ImageGeometry(spacing=(spacing, spacing, 1.0)))
    prepared = preprocess(image, PreprocessConfig(target_spacing_mm=target, normalise_laterality=flip),
                          window_grid=(256, 32))
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 250, 2)
    box = np.array([[x0, y0, x0 + rng.uniform(5, 60), y0 + rng.uniform(5, 60)]])
    there = prepared.boxes_to_processed(box, clip=False)
    np.testing.assert_allclose(prepared.boxes_to_source(there), box, atol=1e-6)
    # MONAI's Spacing leaves an image whose spacing is within its affine tolerance of the target
    # as it is (0.1504 mm for 0.15 mm: a 0.26 % change), so the boxes scale by the spacing the
    # preprocessed image really has, and that spacing is the target's to within that tolerance.
    analysed = prepared.spacing_mm
    assert analysed == pytest.approx(target or spacing, rel=5e-3)
    ratio = spacing / analysed
    np.testing.assert_allclose(there[0, 2] - there[0, 0], (box[0, 2] - box[0, 0]) * ratio, rtol=1e-6)
