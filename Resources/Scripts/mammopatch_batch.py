"""Headless batch run of MammoPatch.

In 3D Slicer (uses the module Logic):

    Slicer --no-main-window --python-script mammopatch_batch.py --input FOLDER_OR_FILES... --output OUT
           [--model MODEL.pt] [--mode fast|exact] [--device auto|cpu|cuda] [--overwrite]

In plain Python (no Slicer; the same library function):

    python mammopatch_batch.py --input ... --output OUT

Every mammogram gets heatmaps, a label map, findings (JSON + CSV) and an overlay PNG under
OUT/<image>/; OUT/summary.csv lists each input as ok or failed with the reason. Bad files are
skipped and reported. Exit status: 0 all done, 1 some failed, 2 nothing could run.
"""

import argparse
import logging
import os
import sys

# The shared vocabulary is pure Python; in a source tree the library is two folders up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from MammoPatchLib.contract import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE  # noqa: E402
from MammoPatchLib.vocabulary import DEFAULT_MODE, MODES  # noqa: E402


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description="MammoPatch batch prediction")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--mode", choices=list(MODES), default=DEFAULT_MODE)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--resume", action="store_true", help="skip images whose outputs exist")
    return parser.parse_args(argv)


def _in_slicer():
    try:
        import slicer  # noqa: F401

        return hasattr(slicer, "app") and slicer.app is not None
    except ImportError:
        return False


def run(argv):
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if _in_slicer():
        import slicer

        logic = slicer.util.getModuleLogic("MammoPatch")
        if not logic.ensureDependencies(askUser=False):
            logging.error("MammoPatch's dependencies are missing and could not be installed")
            return EXIT_USAGE
        run_files = logic.processFiles
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, in a source tree
        from MammoPatchLib.api import predict_files

        def run_files(inputs, output, modelPath=None, mode=DEFAULT_MODE, device="auto", overwrite=False, resume=False):
            return predict_files(inputs, output, model=modelPath, mode=mode, device=device, overwrite=overwrite,
                                 resume=resume, progress=False)

    from MammoPatchLib.errors import MammoPatchError

    try:
        rows = run_files(args.input, args.output, modelPath=args.model, mode=args.mode, device=args.device,
                         overwrite=args.overwrite, resume=args.resume)
    except MammoPatchError as exc:
        logging.error("%s", exc)
        return EXIT_USAGE
    failed = [r for r in rows if r.failed]
    for row in failed:
        logging.error("skipped: %s", row.error)
    logging.info("%d of %d image(s) done; summary: %s", len(rows) - len(failed), len(rows),
                 os.path.join(args.output, "summary.csv"))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def main() -> None:
    """Run, and always end the process with a status: inside Slicer (--python-script keeps
    the application running after the script) any failure, not only MammoPatch's own errors,
    must still end it, or a window-less Slicer would run forever."""
    status = EXIT_USAGE
    try:
        status = run(sys.argv[1:])
    except SystemExit as exc:  # argparse: usage errors
        status = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BaseException:  # noqa: BLE001 - import errors, install failures, anything
        logging.exception("MammoPatch batch failed")
        status = EXIT_USAGE
    finally:
        if _in_slicer():
            import slicer

            slicer.util.exit(status)
    sys.exit(status)


if __name__ == "__main__":
    main()
