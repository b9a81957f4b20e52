"""The ``mammopatch`` command line; every command calls the same library functions as the
Python API and the Slicer module."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__
from .errors import MammoPatchError

logger = logging.getLogger("mammopatch")


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import FINDING_KINDS, make_vindr_dataset, synthesize_mammogram, write_dicom

    out = Path(args.out)
    if args.vindr:
        root = make_vindr_dataset(out, n_studies=args.studies, shape=tuple(args.shape), spacing_mm=args.spacing,
                                  seed=args.seed, photometric=args.photometric)
        print(f"wrote a VinDr-layout data set of {args.studies} studies to {root}")
        return 0
    kinds = args.findings or list(FINDING_KINDS)
    mammo = synthesize_mammogram(tuple(args.shape), args.spacing, args.laterality, args.view, kinds, seed=args.seed)
    path = write_dicom(mammo, out, photometric=args.photometric, transfer_syntax=args.syntax)
    print(json.dumps({"file": str(path), "findings": [{"class": f.category, "kind": f.kind, "box": f.box}
                                                      for f in mammo.findings]}, indent=1))
    return 0


def run_preprocess_preview(image_path: Path, out_png: Path, spacing_mm: Optional[float] = None,
                           overwrite: bool = True) -> Path:
    """Preprocess one image and write the preview PNG (source + crop box, three channels)."""
    from .io import read_mammogram, write_png
    from .transforms import preprocess
    from .visualize import crop_box, preprocessing_preview

    image = read_mammogram(image_path, spacing_mm=spacing_mm)
    tensor, _ = preprocess(image)
    write_png(preprocessing_preview(image.pixels, tensor, crop_box(tensor)), out_png, overwrite=overwrite)
    return out_png


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .datasets import collect_images

    failures = 0
    out = Path(args.out)
    for path in collect_images(args.inputs):
        try:
            png = run_preprocess_preview(path, out / f"{path.stem}_preprocessed.png", args.spacing, args.overwrite)
            print(f"{path}: {png}")
        except MammoPatchError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .synthetic import synthesize_mammogram, write_dicom

    out = Path(args.out)
    sample = out / "sample_mammogram.dcm"
    mammo = synthesize_mammogram((1024, 832), 0.2, "L", "MLO", ["round mass", "calcification cluster"], seed=7)
    write_dicom(mammo, sample)
    png = run_preprocess_preview(sample, out / "sample_preprocessed.png")
    print(f"sample mammogram: {sample}\npreprocessing preview (source + crop box | original | CLAHE fine | CLAHE coarse): {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammopatch", description="Sliding-patch detection of mammographic findings.")
    parser.add_argument("--version", action="version", version=f"MammoPatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the default job on a generated sample mammogram")
    demo.add_argument("--out", default="mammopatch-output", help="output folder (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)

    pre = sub.add_parser("preprocess", help="write preprocessing previews (channels + crop) for images")
    pre.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    pre.add_argument("--out", required=True, help="output folder")
    pre.add_argument("--spacing", type=float, default=None, help="pixel spacing (mm) for files that store none")
    pre.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pre.set_defaults(func=_cmd_preprocess)

    synth = sub.add_parser("synth", help="generate a synthetic mammogram (DICOM) or a VinDr-layout data set")
    synth.add_argument("--out", required=True, help="output .dcm file, or folder with --vindr")
    synth.add_argument("--vindr", action="store_true", help="write a VinDr-Mammo layout data set")
    synth.add_argument("--studies", type=int, default=4, help="studies (women) in the data set")
    synth.add_argument("--shape", type=int, nargs=2, default=[1024, 832], metavar=("ROWS", "COLS"))
    synth.add_argument("--spacing", type=float, default=0.2, help="pixel spacing in mm")
    synth.add_argument("--laterality", choices=["L", "R"], default="L")
    synth.add_argument("--view", choices=["CC", "MLO"], default="CC")
    synth.add_argument("--findings", nargs="*", default=None, help="finding kinds (default: one of each)")
    synth.add_argument("--photometric", choices=["MONOCHROME1", "MONOCHROME2"], default="MONOCHROME2")
    synth.add_argument("--syntax", choices=["explicit", "rle", "jpeg2000", "jpegls"], default="explicit")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MammoPatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
