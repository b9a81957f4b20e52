"""Grad-CAM activation maps of findings: in source geometry, inside the finding's window, and
written as NRRD and PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_activation_maps_cover_the_finding_window(tmp_path):
    from helpers import tiny_model_file

    from MammoPatchLib.activation import activation_maps, write_activation_maps
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    path = write_dicom(synthesize_mammogram((640, 512), 0.1, "L", "CC", ["round mass"], seed=3), tmp_path / "m.dcm")
    model = load_model(tiny_model_file(tmp_path / "m.pt", spacing_mm=0.2))
    predictor = Predictor(model, mode="fast", device="cpu", thresholds=[0.0] * 10)
    image = read_mammogram(path)
    result = predictor.predict_image(image)
    maps = activation_maps(predictor, image, result, count=2)
    assert len(maps) == 2
    for item, finding in zip(maps, result.findings):
        assert item.source_map.shape == image.shape and item.picture.shape == (256, 256, 3)
        assert 0.0 <= item.source_map.min() and item.source_map.max() <= 1.0 + 1e-6
        x0, y0, x1, y1 = item.window_box_px
        assert x0 <= finding.peak_px[0] <= x1 and y0 <= finding.peak_px[1] <= y1
        # a 256 px window at 0.2 mm is 512 px of this 0.1 mm image, less where the image ends
        assert ((x1 - x0) == 512 or x0 == 0 or x1 == 512) and ((y1 - y0) == 512 or y0 == 0 or y1 == 640)
        outside = np.ones(image.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert item.source_map[outside].max() == 0.0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "activation_notes.txt").write_text("not a map")
    written = write_activation_maps(maps, image.geometry, tmp_path / "out")
    assert len(written) == 4 and read_mammogram(written[0], min_side=0).shape == image.shape
    # the Slicer module links each map to its finding by the rank in the file name
    from MammoPatchLib.volume_bridge import activation_map_files

    found = activation_map_files(str(tmp_path / "out"))
    assert [index for index, _ in found] == [0, 1]
    assert [Path(path).name for _, path in found] == [Path(p).name for p in written if p.endswith(".nrrd")]
