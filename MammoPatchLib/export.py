"""Export a model file as a MONAI bundle, so MONAI's tools can load and run it.

Layout::

    <bundle>/configs/metadata.json   versions, input/output description, classes
    <bundle>/configs/inference.json  the components that run, built by MONAI's ConfigParser:
                                     network_def (weights from models/model.pt), preprocessing,
                                     inferer (the dense pass; swap in ExactInferer for the
                                     window-by-window mode), detection, predictor, and a "run"
                                     that predicts every image of input_dir into output_dir
    <bundle>/models/model.pt         the network's state dict (MONAI convention)
    <bundle>/models/mammopatch.pt    the MammoPatch model file (metadata + checksum)
    <bundle>/docs/README.md

Run it with ``python -m monai.bundle run --config_file <bundle>/configs/inference.json
--meta_file <bundle>/configs/metadata.json --bundle_root <bundle> --input_dir IMAGES
--output_dir OUT``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import monai
import torch

from . import __version__
from .io.atomic import atomic_path
from .model_file import fine_head_arguments, load_model
from .vocabulary import PathLike


def _write_json(path: Path, value) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def export_bundle(model_path: PathLike, bundle_dir: PathLike) -> Path:
    """Write a MONAI bundle for a MammoPatch model file; returns the bundle folder."""
    loaded = load_model(model_path)
    info = loaded.info
    root = Path(bundle_dir)
    (root / "models").mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "models" / "model.pt") as tmp:
        torch.save(loaded.network.state_dict(), tmp)
    shutil.copyfile(model_path, root / "models" / "mammopatch.pt")
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": __version__,
        "changelog": {__version__: "exported by MammoPatch"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": __import__("numpy").__version__,
        "optional_packages_version": {"MammoPatch": __version__},
        "name": "MammoPatch sliding-patch mammography classifier",
        "task": "Detection of mammographic findings with a sliding patch classifier (per-class heatmaps)",
        "description": info.description or "MammoPatch model",
        "authors": "MammoPatch contributors",
        "copyright": "see the model card",
        "references": ["Mellado et al., A Deep Learning Classifier Using Sliding Patches for Detection of "
                       "Mammographical Findings, 2023"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MG", "num_channels": 3,
                                 "spatial_shape": [info.window, info.window], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "original", "1": "CLAHE fine", "2": "CLAHE coarse"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "multilabel", "num_channels": len(info.classes),
                                 "spatial_shape": [1] if info.head == "window" else [info.window // info.cell_px] * 2, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {str(k): c for k, c in enumerate(info.classes)}}},
        },
        "mammopatch": info.to_dict(),
    }
    inference = {
        "imports": ["$import torch", "$import MammoPatchLib", "$import MammoPatchLib.api",
                    "$import MammoPatchLib.model_file"],
        "bundle_root": ".",
        "input_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/output'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "model_info": "$MammoPatchLib.model_file.ModelInfo.from_dict("
                      "MammoPatchLib.model_file.read_model_payload(@bundle_root + '/models/mammopatch.pt')['info'])",
        "network_def": {"_target_": "MammoPatchLib.networks.PatchClassifier", "backbone": info.backbone,
                        "num_classes": len(info.classes), "hidden": info.hidden, "window": info.window,
                        "head_pooling": info.head_pooling, "head": info.head, "neighbourhood": info.neighbourhood,
                        "bottleneck": info.bottleneck, "ensemble": info.ensemble,
                        "tuned_stages": info.tuned_stages, "fine_head": fine_head_arguments(info)},
        "network": "$@network_def.to(@device)",
        "model": {"_target_": "MammoPatchLib.model_file.LoadedModel", "network": "@network", "info": "@model_info",
                  "path": "$@bundle_root + '/models/mammopatch.pt'", "sha256": loaded.sha256},
        "preprocessing": {"_target_": "MammoPatchLib.transforms.PreprocessConfig",
                          **{k: v for k, v in info.preprocessing.to_dict().items() if k != "target_spacing_mm"}},
        "inferer": {"_target_": "MammoPatchLib.inference.DenseInferer", "window": info.window, "stride": info.stride,
                    "blend": "gaussian", "device": "@device"},
        "detection": {"_target_": "MammoPatchLib.postprocess.DetectionConfig", **info.inference.detection.to_dict()},
        "predictor": {"_target_": "MammoPatchLib.inference.Predictor", "model": "@model", "device": "$str(@device)",
                      "inferer": "@inferer", "preprocessing": "@preprocessing", "detection": "@detection",
                      "progress": False},
        "initialize": ["$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', map_location='cpu', "
                       "weights_only=True))", "$@network.eval()"],
        "run": ["$MammoPatchLib.api.predict_files(@input_dir, @output_dir, predictor=@predictor, progress=False, "
                "overwrite=True)"],
        "finalize": [],
    }
    _write_json(root / "configs" / "metadata.json", metadata)
    _write_json(root / "configs" / "inference.json", inference)
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "README.md").write_text(
        "# MammoPatch model bundle\n\n" + (info.description or "") + "\n\nSee configs/metadata.json for classes, "
        "pixel spacing and preprocessing. Run:\n\n    python -m monai.bundle run --config_file configs/inference.json "
        "--meta_file configs/metadata.json --bundle_root . --input_dir IMAGES --output_dir OUT\n")
    return root
