"""Headless batch run of MammoPatch over a folder of studies.

In 3D Slicer (no window; on Linux without a display add ``xvfb-run -a`` in front, or set
``QT_QPA_PLATFORM=offscreen``), with the script from the installed extension's
``lib/Slicer-X.Y/qt-scripted-modules/Resources/Scripts/`` folder:

    Slicer --no-main-window --python-script .../mammopatch_batch.py --input STUDIES... --output OUT
           [--model MODEL.pt] [--mode fast|exact] [--device auto|cpu|cuda] [--overwrite | --resume]

In plain Python (no Slicer), the same worker:

    python mammopatch_batch.py --input ... --output OUT

The analysis runs in the module's worker process (``mammopatch predict``, started through
PythonSlicer in Slicer, the running Python elsewhere: MammoPatchSlicer.worker), not in Slicer's
own process, with the dependencies checked first. The inputs are image files, folders (a
folder of studies: DICOM pairs both breasts of a view by StudyInstanceUID) or a manifest CSV
with ``study``, ``view`` and ``laterality`` columns. Every mammogram gets heatmaps, a label map,
findings (JSON + CSV) and an overlay PNG under OUT/<image>/; OUT/summary.csv lists each input as
ok or failed with the reason, OUT/result-manifest.json every file written. Bad files are skipped
and reported. The exit status is the worker's (MammoPatchLib.contract: 0 all done, 1 some
failed, 2 bad arguments or nothing could run, 3 the output cannot be written, 130 cancelled).
Ctrl-C cancels as the module's Cancel button does: the worker stops at its next batch of
windows, keeps the images it finished (``--resume`` goes on from them) and writes the manifest
(status "cancelled"); a second Ctrl-C stops it at once.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile

# In an installed extension the library and the module's package are two folders up (beside
# MammoPatch.py); in a source tree the library is two folders up and the package in MammoPatch/.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _folder in (os.path.join(_ROOT, "MammoPatch"), _ROOT):
    if os.path.isdir(_folder) and _folder not in sys.path:
        sys.path.insert(0, _folder)
from MammoPatchLib.contract import (EXIT_CANCELLED, EXIT_SOME_FAILED, EXIT_USAGE, RESULT_MANIFEST_FILE,  # noqa: E402
                                    parse_progress_line)
from MammoPatchLib.vocabulary import DEFAULT_MODE, MODES  # noqa: E402


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description="MammoPatch batch prediction")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders of studies or a manifest CSV")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--mode", choices=list(MODES), default=DEFAULT_MODE)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument("--resume", action="store_true", help="skip images whose outputs exist")
    return parser.parse_args(argv)


def _in_slicer():
    try:
        import slicer  # noqa: F401

        return hasattr(slicer, "app") and slicer.app is not None
    except ImportError:
        return False


def _echo(line: str) -> None:
    """The worker's output lines, but its progress lines (for the GUI), on stderr."""
    if parse_progress_line(line) is None:
        print(line, file=sys.stderr, flush=True)


def run(argv):
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    environment = None
    if _in_slicer():
        import slicer

        logic = slicer.util.getModuleLogic("MammoPatch")
        if not logic.ensureDependencies(askUser=False):
            logging.error("MammoPatch's dependencies are missing and could not be installed")
            return EXIT_USAGE
        environment = slicer.util.startupEnvironment()
    from MammoPatchSlicer.run import RunRequest, worker_command, worker_environment
    from MammoPatchSlicer.worker import WorkerProcess, python_for_worker

    python = python_for_worker() if environment is not None else sys.executable
    work = tempfile.mkdtemp(prefix="mammopatch-batch-")
    try:
        cancel = os.path.join(work, "cancel")
        command = worker_command(python, args.input, args.output, os.path.join(args.output, RESULT_MANIFEST_FILE),
                                 cancel, RunRequest(model_path=args.model, mode=args.mode, device=args.device),
                                 existing="overwrite" if args.overwrite else "resume" if args.resume else "")
        worker = WorkerProcess(command, worker_environment(environment, _ROOT), cancel,
                               _echo, lambda code: None)
        try:
            worker.wait()
        except KeyboardInterrupt:  # Ctrl-C: cancel as the module's Cancel does, keeping what is done
            _echo("cancelling: the images finished so far are kept, --resume goes on from them (Ctrl-C again "
                  "stops at once)")
            worker.cancel()
            try:
                worker.wait()
            except KeyboardInterrupt:
                worker.kill()
            return EXIT_CANCELLED
    finally:
        shutil.rmtree(work, ignore_errors=True)
    code = worker.exit_code  # set before wait() returns
    return code if code >= 0 else EXIT_SOME_FAILED  # killed by a signal: not all done


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
