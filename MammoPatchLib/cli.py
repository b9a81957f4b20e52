"""The ``mammopatch`` command line; every command calls the same library functions as the
Python API and the Slicer module."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .contract import EXIT_CANCELLED, EXIT_CANNOT_WRITE, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE  # noqa: F401 - API
from .contract import PROGRESS_PREFIX, progress_line
from .errors import MammoPatchError
from .vocabulary import (BLEND_MODES, DEFAULT_MODE, HEATMAP_CHOICES, HEATMAP_DTYPES, MODES, VOLUME_FORMATS, BlendMode,
                         HeatmapChoice, HeatmapDtype, Status)

logger = logging.getLogger("mammopatch")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _spacing(text: str) -> float:
    from .io.validate import check_spacing_value

    try:
        return check_spacing_value(_number(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scale(text: str) -> float:
    value = _number(text)
    if not 0.25 <= value <= 4.0:
        raise argparse.ArgumentTypeError(f"scale {value} is outside [0.25, 4] (a window scale relative to the model)")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold {value} is not a probability in [0, 1]")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
    return value


def _folds(text: str) -> int:
    """At least two folds; whether the data hold as many women is known once they are read
    (:func:`~MammoPatchLib.datasets.splits.folds_by_patient` refuses more folds than women)."""
    return _whole_number(text, 2)


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


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


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .api import preview_preprocessing
    from .io.discovery import collect_images

    failures = 0
    out = Path(args.out)
    for path in collect_images(args.inputs, exclude=[out]):  # never its own previews
        try:
            png = preview_preprocessing(path, out / f"{path.stem}_preprocessed.png", args.spacing, args.overwrite)
            print(f"{path}: {png}")
        except MammoPatchError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
    return 1 if failures else 0


def _add_predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model file (default: the bundled default model)")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                        help="exact: window by window (the poster); fast: one dense pass (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then Apple MPS, then CPU), cpu, mps or cuda[:N] (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="windows per forward pass in exact mode (default: 256 on CUDA, 64 on MPS, 8 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (CUDA; pays off over many images)")
    parser.add_argument("--flip-tta", action="store_true", default=None,
                        help="test-time augmentation: also run the mirrored image and average (default: the model's)")
    parser.add_argument("--no-flip-tta", dest="flip_tta", action="store_false",
                        help="no flip test-time augmentation, whatever the model's default")
    parser.add_argument("--blend", choices=BLEND_MODES, default=BlendMode.GAUSSIAN.value,
                        help="how overlapping windows are averaged (default: %(default)s)")
    parser.add_argument("--scales", type=_scale, nargs="+", default=[1.0],
                        help="multi-scale inference: window scales relative to the model's spacing, e.g. 0.75 1 1.5 "
                             "(heatmaps averaged; default: 1)")
    parser.add_argument("--classes", nargs="+", default=None, help="report only these classes")
    parser.add_argument("--thresholds", type=_probability, nargs="+", default=None,
                        help="per-class probability thresholds (one per model class); they replace the model's "
                             "operating point, its image gate included")
    parser.add_argument("--alone", dest="other_breast", action="store_false",
                        help="read every image alone, even where the batch holds the other breast of its view "
                             "(default: both breasts of a view are read against each other when the model can)")
    parser.add_argument("--format", nargs="+", choices=list(VOLUME_FORMATS), default=["nrrd"], dest="formats",
                        help="volume format(s) of the heatmaps and label map (default: nrrd)")
    parser.add_argument("--heatmaps", choices=HEATMAP_CHOICES, default=HeatmapChoice.SELECTED.value,
                        help="heatmap files: none, the reported classes (default) or all ten")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--full-resolution-heatmaps", action="store_true",
                      help="write heatmaps at every source pixel (default: one value per network cell, "
                           "placed in the source's frame; viewers interpolate it)")
    grid.add_argument("--heatmap-spacing", type=_positive_number, default=None, metavar="MM",
                      help="write heatmaps sampled at this pixel spacing (e.g. 1) instead of on the network's cells")
    parser.add_argument("--heatmap-dtype", choices=HEATMAP_DTYPES, default=HeatmapDtype.FLOAT32.value,
                        help="heatmap values: float32 probabilities or uint8 (probability x 255)")
    parser.add_argument("--workers", type=_non_negative_int, default=2,
                        help="threads reading and preprocessing the next images while the network runs "
                             "(default: 2; 0 reads each image when its turn comes)")
    parser.add_argument("--activation-maps", type=_non_negative_int, default=0, metavar="N",
                        help="also write Grad-CAM maps (NRRD + PNG) of the N top findings per image")
    parser.add_argument("--dicom-out", action="store_true",
                        help="also write DICOM SEG, heatmap SEG, overlay Secondary Capture and SR (DICOM inputs)")
    parser.add_argument("--overwrite", action="store_true", help="recompute images whose outputs exist and replace them")
    parser.add_argument("--resume", action="store_true",
                        help="skip images whose outputs exist (finish a run that was stopped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _options(args: argparse.Namespace, dicom: bool = False):
    """The prediction and output options of the command's arguments."""
    from .inference import PredictOptions
    from .results.files import OutputOptions

    predict = PredictOptions(mode=args.mode, device=args.device, sw_batch_size=args.batch_size, blend=args.blend,
                             scales=tuple(args.scales), flip_tta=args.flip_tta, compile=args.compile,
                             classes=args.classes, thresholds=args.thresholds, progress=not args.no_progress,
                             other_breast=args.other_breast)
    outputs = OutputOptions(formats=tuple(args.formats), heatmaps=args.heatmaps,
                            full_resolution_heatmaps=args.full_resolution_heatmaps,
                            heatmap_spacing_mm=args.heatmap_spacing, heatmap_dtype=args.heatmap_dtype,
                            dicom=args.dicom_out or dicom, activation_maps=args.activation_maps)
    return predict, outputs


def _print_row(row) -> None:
    """One line per image, as soon as it is done; each error printed once."""
    if row.status == Status.OK:
        print(f"{row.image}: {row.findings} finding(s) -> {row.output}", flush=True)
    elif row.status == Status.DONE_EARLIER:
        print(f"{row.image}: done earlier -> {row.output}", flush=True)
    else:
        print(f"error: {row.error}", file=sys.stderr, flush=True)


def _batch_exit(rows, results: Path) -> int:
    from .prediction.rows import SUMMARY_FILE, failed_images

    failed = failed_images(rows)
    print(f"{len(rows) - len(failed)} of {len(rows)} image(s) done; summary: {results / SUMMARY_FILE}")
    if failed:
        print(f"{len(failed)} image(s) failed: " + ", ".join(failed), file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _progress_reporter(args: argparse.Namespace):
    """For a caller that runs the command as a worker process (the Slicer module): progress as
    machine-readable lines, and a cancel file whose appearance stops the run."""
    if not args.progress_lines and not args.cancel_file:
        return None
    from .errors import Cancelled

    def report(fraction: float, text: str) -> None:
        if args.cancel_file and Path(args.cancel_file).exists():
            raise Cancelled("cancelled by the user")
        if args.progress_lines:
            print(progress_line(fraction, text), flush=True)

    return report


def _cmd_predict(args: argparse.Namespace) -> int:
    from .api import predict_files
    from .distributed import launched_rank, launched_world_size

    inputs = list(args.inputs)
    if launched_world_size() > 1 and (args.from_dicomweb or args.to_dicomweb):
        raise MammoPatchError("--from-dicomweb / --to-dicomweb run in one process, not under torchrun")
    if args.from_dicomweb:
        from .results.dicomweb import fetch_study

        if not args.study:
            raise MammoPatchError("--from-dicomweb needs --study STUDY_INSTANCE_UID")
        inputs += [str(p) for p in fetch_study(args.from_dicomweb, args.study, Path(args.out) / ".dicomweb-input")]
        print(f"fetched {len(inputs)} mammogram(s) of study {args.study}")
    if not inputs:
        raise MammoPatchError("no inputs: give files, folders or --from-dicomweb URL --study UID")
    options, outputs = _options(args, dicom=bool(args.to_dicomweb))

    def run():
        return predict_files(inputs, args.out, args.model, options, outputs, spacing_mm=args.spacing,
                             overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                             workers=args.workers, on_result=_print_row, on_progress=_progress_reporter(args))

    if args.result_manifest and launched_rank() == 0:
        from .result_manifest import record_run

        rows = record_run(args.result_manifest, run)
    else:
        rows = run()
    if args.to_dicomweb:
        from .results.dicomweb import store

        results = [f for r in rows if r.ok for f in sorted(Path(r.output).glob("*.dcm"))]
        print(f"stored {store(args.to_dicomweb, results)} DICOM result(s) on {args.to_dicomweb}")
    if launched_rank() != 0:  # rank 0 reports the merged batch; the others only their own failures (above)
        return EXIT_OK
    return _batch_exit(rows, Path(args.out))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .api import default_model_path, predict_files
    from .model_file import make_untrained_model
    from .synthetic import synthesize_mammogram, write_dicom

    out = Path(args.out)
    sample = out / "sample_mammogram.dcm"
    mammo = synthesize_mammogram((1024, 832), 0.2, "L", "MLO", ["round mass", "calcification cluster"], seed=7)
    write_dicom(mammo, sample)
    model = args.model or default_model_path()
    if args.model is None and not Path(model).is_file():
        model = out / "UNTRAINED-demo-model.pt"
        make_untrained_model(model)
        print("NOTE: no bundled trained model found; using an UNTRAINED model: the heatmaps are meaningless.")
    options, outputs = _options(args)
    rows = predict_files([sample], out / "results", str(model), options, outputs, overwrite=True,
                         resume=args.resume, progress=not args.no_progress, workers=args.workers,
                         on_result=_print_row)
    code = _batch_exit(rows, out / "results")
    from .results.files import OVERLAY_FILE

    print(f"sample mammogram: {sample}\noverlay: {out / 'results' / 'sample_mammogram' / OVERLAY_FILE}")
    for f in mammo.findings:
        print(f"  drawn in the sample: {f.category} at box {tuple(round(v) for v in f.box)}")
    return code


def _cmd_info(args: argparse.Namespace) -> int:
    from .model_file import read_model_payload

    payload = read_model_payload(args.model)
    info = dict(payload["info"])
    info["sha256"] = payload["sha256"]
    info["parameters"] = int(sum(v.numel() for v in payload["state_dict"].values()))
    info["stored_dtype"] = str(next(iter(payload["state_dict"].values())).dtype).replace("torch.", "")
    print(json.dumps(info, indent=1))
    return 0


def _cmd_export_bundle(args: argparse.Namespace) -> int:
    from .export import export_bundle

    root = export_bundle(args.model, args.out)
    print(f"MONAI bundle written to {root}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.recipe import Recipe
    from .training.run import THRESHOLDS_NOT_FITTED, train

    recipe = Recipe.load(args.config)
    result = train(recipe, args.data, args.out, resume=args.resume, progress=not args.no_progress,
                   cache_dir=Path(args.cache) if args.cache else None, command=_train_command(args))
    if result.model is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return EXIT_OK
    loss = f"; {result.epochs} epoch(s), final training loss {result.final_loss:.4f}" if result.epochs else ""
    print(f"trained {recipe.name} ({recipe.trains}) on all {result.images} images of {result.women} women{loss}; "
          f"model: {result.model} (card: {result.model.with_suffix('.md')}); thresholds {THRESHOLDS_NOT_FITTED}")
    return EXIT_OK


def _train_command(args: argparse.Namespace) -> str:
    """The command line that rebuilds a ``train`` model, for its card (the data and output
    folders as placeholders: they are the user's)."""
    config = Path(args.config)
    return f"mammopatch train --config {config.as_posix() if not config.is_absolute() else config.name} " \
           "--data DATA --out OUT"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.report import evaluate

    report = evaluate(args.model, args.data, args.out, split=args.split, mode=args.mode, device=args.device,
                      max_images=args.max_images, progress=not args.no_progress, draws=args.draws,
                      flip_tta=args.flip_tta, scales=args.scales, split_file=args.split_file)
    if report["model"]["provenance"] == "unknown":
        from .evaluation.held_out import UNKNOWN_PROVENANCE

        print(UNKNOWN_PROVENANCE)
    lesion = report["lesion_level"]
    sens = ", ".join(f"{v:.3f} at {k}" for k, v in lesion["all_classes_froc"].items())
    print(f"lesion level ({lesion['lesions']} lesions): sensitivity {sens} FP/image; image-level AUC "
          f"{report['image_level']['auc_abnormal_vs_normal']:.3f}; report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.calibration import calibrate_model

    result = calibrate_model(args.model, args.data, args.out, split=args.split, device=args.device,
                             split_file=args.split_file)
    temperatures = ", ".join(f"{c} {t:.3f}" for c, t in result["temperatures"].items() if t != 1.0)
    print(f"temperatures: {temperatures or 'all 1'}; ECE {result['before']['ece']:.4f} -> "
          f"{result['after']['ece']:.4f} on {result['women']} patches; calibrated model: {args.out}")
    return 0


def _cmd_crossval(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_crossval(args)
    finally:
        torch.set_num_threads(threads)  # an in-process caller keeps its own setting


def _run_crossval(args: argparse.Namespace) -> int:
    """Training (each recipe's fold heads and out-of-fold predictions, as work units that a
    rerun skips when finished and that torchrun's ranks share), then evaluation (their figures
    and the report of every recipe in ``--out``), then the model of the first recipe: both on
    rank 0."""
    from .datasets import load_records
    from .distributed import start_ranks
    from .errors import ConfigError
    from .evaluation.crossval_figures import REPORT_MD, report_crossval
    from .training.recipe import Recipe
    from .training.crossval import FOLD_FILE, UNITS_DIR, cross_validate, fold_assignment

    recipes = [Recipe.load(path) for path in args.config]
    if args.model_out and recipes[0].model_file_refusal:  # refused before any feature is computed
        raise ConfigError(f"--model-out: {recipes[0].model_file_refusal}", args.config[0])
    if args.model_out and recipes[0].trains == "network":
        raise ConfigError("--model-out: a trains 'network' recipe's folds train one whole network each, which no "
                          "model file averages; build its model with `mammopatch train`", args.config[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    networks = [recipe.device for recipe in recipes if recipe.trains == "network"]
    ranks = start_ranks(networks[0] if networks else "cpu")  # NCCL where a network recipe trains on GPUs
    try:
        found = None
        if ranks.is_main:  # the data (synthetic:N is written) and the fold file: once, then shared
            records, description = load_records(args.data, work_dir=out)
            found = (records, description, fold_assignment(records, args.folds, out, seed=args.fold_seed))
        records, description, fold_of = ranks.broadcast(found)
        runs = cross_validate(recipes, records, fold_of, Path(args.cache) if args.cache else out / "feature-cache",
                              progress=not args.no_progress, units_dir=out / UNITS_DIR, ranks=ranks)
        if not ranks.is_main:
            return 0
        report = report_crossval([run.out_of_fold for run in runs], out, description, args.folds,
                                 baseline=args.baseline, draws=args.draws, patch_tables=_poster_tables(runs))
    finally:
        ranks.close()
    for name, row in report["recipes"].items():
        sens, iv = row["sensitivity_at_fp"], row["intervals"]
        print(f"{name}: sensitivity at 1 FP/image {sens['1']:.3f} ({iv['sens@1'][0]:.2f}-{iv['sens@1'][1]:.2f}), "
              f"image AUC {row['image_auc']:.3f} ({iv['image_auc'][0]:.2f}-{iv['image_auc'][1]:.2f})")
    if args.model_out:
        path = _write_crossval_model(runs[0], args, report, description, out / FOLD_FILE)
        print(f"model built from {recipes[0].name}: {path} (card: {path.with_suffix('.md')})")
    print(f"report: {out / REPORT_MD}")
    return 0


def _poster_tables(runs) -> dict:
    """The poster's patch table of each window-head recipe, from its fold networks' (or fold
    heads') out-of-fold predictions."""
    from .evaluation.report import out_of_fold_patch_table
    from .training.cell_bundle import fold_networks
    from .training.crossval import cell_model_info
    from .training.network_fit import network_info

    return {run.recipe.name: out_of_fold_patch_table(run.networks, network_info(run.recipe), run.recipe.classes)
            if run.networks else out_of_fold_patch_table(fold_networks(run), cell_model_info(run.recipe),
                                                         run.recipe.classes)
            for run in runs if run.recipe.head == "window"}


def _write_crossval_model(run, args: argparse.Namespace, report, description: str, fold_file: Path) -> Path:
    """The first recipe's model at its out-of-fold operating point, with its provenance and card."""
    from .evaluation.crossval_figures import model_operating_point
    from .evaluation.model_card import write_model_card
    from .training.cell_bundle import sample_image, write_bundled_model
    from .training.crossval import cell_model_info

    point = model_operating_point(run.out_of_fold, cell_model_info(run.recipe).classes)
    path = write_bundled_model(run, args.model_out, point, description, report["recipes"][run.recipe.name],
                               fold_file=fold_file)
    sample = sample_image(run)
    write_model_card(path, command=_crossval_command(args), crossval=report,
                     timed_record=sample.record if sample else None)
    return path


def _crossval_command(args: argparse.Namespace) -> str:
    """The command line that rebuilds a model, for its card (the data and report folders as
    placeholders: they are the user's)."""
    configs = " ".join(Path(c).as_posix() if not Path(c).is_absolute() else Path(c).name for c in args.config)
    seed = f" --fold-seed {args.fold_seed}" if args.fold_seed else ""
    return (f"mammopatch crossval --config {configs} --data DATA --folds {args.folds}{seed} --out REPORT "
            f"--model-out {Path(args.model_out).name}")


def _add_crossval_command(sub) -> None:
    crossval = sub.add_parser("crossval", help="cross-validate recipes by woman (pooled out-of-fold "
                                               "FROC, AUC, paired intervals); optionally build the model")
    crossval.add_argument("--config", required=True, nargs="+", help="recipe JSON file(s), judged on the same folds")
    crossval.add_argument("--data", required=True, help="mini-MIAS or VinDr-layout folder, or synthetic:N")
    crossval.add_argument("--folds", type=_folds, default=5,
                          help="folds of women, 2 to the number of women in the data (default: %(default)s)")
    crossval.add_argument("--fold-seed", type=_non_negative_int, default=0,
                          help="seed of the division of women into folds, drawn when OUT has no folds.csv yet "
                               "(another seed gives another division, in another OUT: whether a difference "
                               "between recipes belongs to one division; default: %(default)s)")
    crossval.add_argument("--out", required=True,
                          help="report folder (its folds.csv is reused by later runs; a rerun of the same command "
                               "skips the recipe x fold units already finished under its units/)")
    crossval.add_argument("--cache", default=None, help="feature cache folder (default OUT/feature-cache)")
    crossval.add_argument("--baseline", default=None, help="recipe the others are compared with (default: the first)")
    crossval.add_argument("--draws", type=_positive_int, default=1000, help="bootstrap draws over women")
    crossval.add_argument("--threads", type=int, default=1,
                          help="torch threads (default 1: the head's small matrix products gain nothing from more, "
                               "and on a busy machine two spinning threads ran 5-10x slower than one)")
    crossval.add_argument("--model-out", default=None,
                          help="also write the model the first recipe makes (its fold heads as one ensemble), "
                               "thresholds fitted out of fold")
    crossval.add_argument("--no-progress", action="store_true")
    crossval.set_defaults(func=_cmd_crossval)


def _add_demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="run the bundled default model on a generated sample mammogram")
    demo.add_argument("--out", default="mammopatch-output", help="output folder (default: %(default)s)")
    _add_predict_options(demo)
    demo.set_defaults(func=_cmd_demo)


def _add_predict_command(sub) -> None:
    predict = sub.add_parser("predict", help="heatmaps, label maps and findings for mammograms")
    predict.add_argument("inputs", nargs="*",
                         help="files, folders, glob patterns or manifest CSVs (a 'path' column, optional 'spacing_mm')")
    predict.add_argument("--from-dicomweb", metavar="URL", default=None,
                         help="fetch the mammograms of --study from this DICOMweb server")
    predict.add_argument("--study", default=None, help="StudyInstanceUID to fetch (with --from-dicomweb)")
    predict.add_argument("--to-dicomweb", metavar="URL", default=None,
                         help="store the DICOM results (SEG, SC, SR) on this DICOMweb server")
    predict.add_argument("--out", required=True, help="output folder (one sub-folder per image + summary.csv)")
    predict.add_argument("--spacing", type=_spacing, default=None, help="pixel spacing (mm) for files that store none")
    predict.add_argument("--progress-lines", action="store_true",
                         help=f"print progress as '{PROGRESS_PREFIX} <fraction> <text>' lines (for programs running this)")
    predict.add_argument("--cancel-file", default=None, help="stop (exit 130) as soon as this file exists")
    predict.add_argument("--result-manifest", metavar="PATH", default=None,
                         help="write a JSON manifest of the run (status, error, every file written by kind, findings, "
                              "source geometry) here, however the run ends")
    _add_predict_options(predict)
    predict.set_defaults(func=_cmd_predict)


def _add_info_command(sub) -> None:
    info = sub.add_parser("info", help="print a model file's metadata")
    info.add_argument("model", help="model file")
    info.set_defaults(func=_cmd_info)


def _add_train_command(sub) -> None:
    train = sub.add_parser("train", help="train one model from a recipe on every woman of the data (its thresholds "
                                         "are not fitted: see crossval and calibrate)")
    train.add_argument("--config", required=True, help="recipe JSON file (Resources/Models/training/*.json)")
    train.add_argument("--data", required=True, help="VinDr-layout or mini-MIAS folder, or synthetic:N")
    train.add_argument("--out", required=True, help="output folder (model.pt and its card model.md; checkpoint.pt "
                                                    "and metrics.csv for a trains 'network' recipe, units/ of "
                                                    "finished ensemble members for head and stages recipes)")
    train.add_argument("--resume", action="store_true",
                       help="continue a stopped trains 'network' run from OUT/checkpoint.pt (a head or stages "
                            "recipe's run skips the ensemble members finished under OUT/units with or without it)")
    train.add_argument("--cache", default=None, help="cache folder of preprocessed images (trains network) or "
                                                     "backbone features (head, stages) (default OUT/cache)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_cmd_train)


def _add_evaluate_command(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="write the evaluation report of a model on held-out women")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True, help="data set folder (VinDr layout or mini-MIAS) or synthetic:N")
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.add_argument("--split", default="validation", help="with --split-file: the split to evaluate")
    evaluate.add_argument("--split-file", default=None, help="CSV (image_id, split): evaluate one split of --data only")
    evaluate.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    evaluate.add_argument("--flip-tta", action="store_true", default=None, help="also run mirrored images")
    evaluate.add_argument("--scales", type=_scale, nargs="+", default=[1.0], help="multi-scale inference")
    evaluate.add_argument("--draws", type=int, default=2000, help="bootstrap draws for the intervals (0: none)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--max-images", type=int, default=None)
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_calibrate_command(sub) -> None:
    calibrate = sub.add_parser("calibrate", help="fit per-class temperatures on held-out women; write a new model")
    calibrate.add_argument("--model", required=True)
    calibrate.add_argument("--data", required=True, help="images of women who did not train the model")
    calibrate.add_argument("--out", required=True, help="the calibrated model file to write")
    calibrate.add_argument("--split", default="validation", help="with --split-file: the split to fit on")
    calibrate.add_argument("--split-file", default=None, help="CSV (image_id, split): fit on one split of --data only")
    calibrate.add_argument("--device", default="auto")
    calibrate.set_defaults(func=_cmd_calibrate)


def _add_export_bundle_command(sub) -> None:
    bundle = sub.add_parser("export-bundle", help="export a model file as a MONAI bundle")
    bundle.add_argument("model", help="model file")
    bundle.add_argument("--out", required=True, help="bundle folder")
    bundle.set_defaults(func=_cmd_export_bundle)


def _add_preprocess_command(sub) -> None:
    pre = sub.add_parser("preprocess", help="write preprocessing previews (channels + crop) for images")
    pre.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    pre.add_argument("--out", required=True, help="output folder")
    pre.add_argument("--spacing", type=_spacing, default=None, help="pixel spacing (mm) for files that store none")
    pre.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pre.set_defaults(func=_cmd_preprocess)


def _add_synth_command(sub) -> None:
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


#: Every subcommand, in the order ``mammopatch --help`` lists them.
COMMANDS = (
    _add_demo_command,
    _add_predict_command,
    _add_info_command,
    _add_train_command,
    _add_evaluate_command,
    _add_calibrate_command,
    _add_crossval_command,
    _add_export_bundle_command,
    _add_preprocess_command,
    _add_synth_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammopatch", description="Sliding-patch detection of mammographic findings.")
    parser.add_argument("--version", action="version", version=f"MammoPatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit codes: 0 all done, 1 some images failed (listed), 2 usage or configuration error
    (bad arguments, model file, data set), 3 the outputs cannot be written (checked before the
    first image), 130 interrupted."""
    for stream in (sys.stdout, sys.stderr):  # file names need not be valid UTF-8: never crash printing one
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("MammoPatchLib").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from .prediction.folder import OutputError
    from .errors import Cancelled

    try:
        return int(args.func(args) or 0)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except MammoPatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:  # a library check of a value the user gave: one line, no traceback
        if args.verbose:
            raise
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__} (-v shows where)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
