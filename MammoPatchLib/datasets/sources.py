"""Which reader a data argument means: a VinDr-Mammo folder, a mini-MIAS folder, or a
generated ``synthetic:N`` set."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import MammoPatchError
from .mias import read_mias
from .records import ImageRecord
from .vindr import read_vindr


def load_records(data: str, work_dir: Optional[Path] = None, seed: int = 0) -> Tuple[List[ImageRecord], str]:
    """Records of a VinDr-layout folder, a mini-MIAS folder, or ``synthetic:N`` (a generated
    VinDr-layout set of N women written under ``work_dir``). Returns (records, description)."""
    if data.startswith("synthetic:"):
        from ..synthetic import make_vindr_dataset

        n = int(data.split(":", 1)[1])
        root = make_vindr_dataset((work_dir or Path(".")) / "synthetic-data", n_studies=n, seed=seed)
        return read_vindr(root), f"synthetic VinDr-layout set of {n} women"
    root = Path(data)
    if (root / "finding_annotations.csv").exists():
        return read_vindr(root), f"VinDr-Mammo layout at {root.name}"
    if (root / "annotations.csv").exists():
        return read_mias(root), "mini-MIAS (MIAS MiniMammographic Database; research use only)"
    raise MammoPatchError("not a data set: expected finding_annotations.csv (VinDr-Mammo), annotations.csv "
                          "(mini-MIAS) or synthetic:N", root)
