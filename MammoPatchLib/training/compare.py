"""``mammopatch compare-backbones``: the poster's backbone comparison with one training budget."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..model_file import read_model_payload
from ..networks import BACKBONES
from .config import TrainConfig
from .run import train

#: The backbones ``mammopatch compare-backbones`` trains when none are named: the poster's
#: EfficientNet-Lite0 and the families it was compared with.
COMPARED_BACKBONES = ("efficientnet-lite0", "resnet50", "densenet121", "swin-t", "vgg19", "mobilenet-v3-large")

POSTER_ROWS = ["Mass", "Suspicious Calcification", "Architectural Distortion", "Asymmetry", "Focal Asymmetry",
               "Suspicious Lymph Node"]


def compare_backbones(backbones: List[str], data: str, out_dir, config_path: Optional[str] = None,
                      epochs: Optional[int] = None, progress: bool = True) -> str:
    """Train each backbone with the same config and budget; return the F1 table (Markdown)
    measured on the validation women's patches, and write it to ``out_dir/comparison.md``."""
    base = TrainConfig.load(config_path) if config_path else TrainConfig()
    out = Path(out_dir)
    results = {}
    for name in backbones:
        values = base.to_dict() | {"backbone": name, "pretrained": BACKBONES[name].pretrained_offline}
        if epochs:
            values["epochs"] = epochs
        config = TrainConfig.from_dict(values)
        train(config, data, out / name, progress=progress)
        results[name] = read_model_payload(out / name / "model.pt")["info"]["training"]["validation"]
    header = "| class | " + " | ".join(backbones) + " |"
    lines = [header, "|---|" + "---|" * len(backbones)]
    for row in POSTER_ROWS:
        cells = []
        for name in backbones:
            metric = results[name]["per_class"].get(row, {})
            cells.append(f"{metric.get('f1', float('nan')):.3f} (n={metric.get('support', 0)})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| weighted average (no No Finding) | " + " | ".join(
        f"{results[n]['weighted_f1_without_no_finding']:.3f}" for n in backbones) + " |")
    table = "\n".join(lines)
    (out / "comparison.md").write_text(table + "\n")
    return table
