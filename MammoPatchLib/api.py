"""The Python API: ``predict`` for one image or array, ``predict_files`` for a batch.

The CLI, the Slicer Logic and the batch script call these functions: there is one pipeline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .batch import output_stem  # noqa: F401 - part of the API
from .errors import Cancelled, MammoPatchError, ModelFileError
from .inference.predictor import PredictionResult, Predictor
from .io import MammogramImage, read_mammogram
from .io.image import DEFAULT_SPACING_MM, ImageGeometry
from .io.readers import validate_pixels
from .model_file import LoadedModel, load_model
from .vocabulary import DEFAULT_MODE, PathLike

logger = logging.getLogger(__name__)

#: Where the bundled default model lives: Resources/ beside MammoPatchLib (source tree and the
#: Slicer extension both have this layout); $MAMMOPATCH_MODEL overrides it.
DEFAULT_MODEL_NAME = "mammopatch-default.pt"


def default_model_path() -> Path:
    env = os.environ.get("MAMMOPATCH_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "Resources" / "Models" / DEFAULT_MODEL_NAME


ModelLike = Union[None, str, "os.PathLike[str]", LoadedModel]


def resolve_model(model: ModelLike = None, device: str = "cpu") -> LoadedModel:
    """A LoadedModel from a path, an already loaded model, or None (the bundled default)."""
    if isinstance(model, LoadedModel):
        return model
    path = Path(model) if model is not None else default_model_path()
    if model is None and not path.is_file():
        raise ModelFileError("the bundled default model is missing; pass a model file (--model)", path)
    return load_model(path, device=device)


def as_image(source: Union[str, "os.PathLike[str]", np.ndarray, MammogramImage], spacing_mm: Optional[float] = None
             ) -> MammogramImage:
    """Read a file, or wrap an array (rows x columns, high = dense) with a pixel spacing."""
    if isinstance(source, MammogramImage):
        validate_pixels(source)
        return source
    if isinstance(source, np.ndarray):
        spacing = float(spacing_mm) if spacing_mm else DEFAULT_SPACING_MM
        image = MammogramImage(pixels=np.asarray(source, dtype=np.float32),
                               geometry=ImageGeometry(spacing=(spacing, spacing, 1.0)),
                               spacing_source="given" if spacing_mm else "default")
        validate_pixels(image)
        return image
    return read_mammogram(source, spacing_mm=spacing_mm)


def predict(source, model: ModelLike = None, mode: str = DEFAULT_MODE, device: str = "auto",
            spacing_mm: Optional[float] = None, **predictor_options: Any) -> PredictionResult:
    """Heatmaps, label map and findings for one mammogram (file path, array or MammogramImage).

    Example::

        from MammoPatchLib import predict
        result = predict("mammogram.dcm")          # bundled default model, exact mode
        result.heatmaps.shape                       # (10, rows, columns)
    """
    predictor = Predictor(resolve_model(model), mode=mode, device=device, **predictor_options)
    return predictor.predict_image(as_image(source, spacing_mm))


def predict_files(inputs, out_dir: PathLike, model: ModelLike = None, mode: str = DEFAULT_MODE,
                  device: str = "auto", spacing_mm: Optional[float] = None, formats: Sequence[str] = ("nrrd",),
                  overwrite: bool = False, resume: bool = False, progress: bool = True,
                  heatmaps: str = "selected", heatmap_spacing_mm: Optional[float] = None,
                  heatmap_dtype: str = "float32", dicom: bool = False, activation_maps: int = 0, workers: int = 2,
                  on_image: Optional[Callable[[int, int, Path], None]] = None,
                  on_result: Optional[Callable[[Dict[str, object]], None]] = None,
                  on_progress: Optional[Callable[[float, str], None]] = None,
                  predictor: Optional[Predictor] = None, **predictor_options: Any) -> List[Dict[str, object]]:
    """Predict every image of files / folders / globs / manifest CSVs into ``out_dir``,
    crash-safely (:mod:`MammoPatchLib.batch`) and, under torchrun, sharded over the ranks
    (:mod:`MammoPatchLib.runner`): a bad file is reported and the batch goes on; each image's
    folder appears only when complete; ``out_dir/summary.csv`` lists every input.

    Args:
        resume: skip images whose output folder exists (done by an earlier, maybe killed, run).
        overwrite: recompute those and replace their folders.
        heatmaps, heatmap_spacing_mm, heatmap_dtype, dicom: which heatmaps are written, at what
            spacing and type, and whether DICOM SEG / SC / SR are too
            (:class:`~MammoPatchLib.outputs.OutputOptions`).
        activation_maps: also write Grad-CAM maps of this many top findings per image.
        workers: threads reading and preprocessing the next images while the network runs.
        on_image: called with (index, count, path) before each image.
        on_result: called with each image's summary row as soon as it is done.
        on_progress: called with (fraction of the batch, text) while it runs; raising
            :class:`~MammoPatchLib.errors.Cancelled` from it stops the batch.
        predictor: an already built Predictor (then ``model``, ``mode``, ``device`` and the
            options are not used).

    Raises:
        OutputError: ``out_dir`` cannot be written or another run holds it (before any image).
        MammoPatchError: no images found, a bad manifest, or the model cannot be loaded.
    """
    from .outputs import OutputOptions, write_result
    from .runner import init_ranks, plan_jobs, run_batch

    options = OutputOptions(formats=tuple(formats), heatmaps=heatmaps, heatmap_spacing_mm=heatmap_spacing_mm,
                            heatmap_dtype=heatmap_dtype, dicom=dicom)
    jobs = plan_jobs(inputs, spacing_mm)
    if not jobs:
        given = [inputs] if isinstance(inputs, (str, Path)) else inputs
        raise MammoPatchError("no images found", ", ".join(str(i) for i in given))
    ctx = init_ranks(device if predictor is None else "cpu")
    try:
        if predictor is None:
            if ctx.distributed and device in ("auto", "cuda"):
                import torch

                device = f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
            predictor = Predictor(resolve_model(model), mode=mode, device=device,
                                  progress=progress and not ctx.distributed, **predictor_options)
        from .batch import OutputFolder

        folder = OutputFolder(out_dir)  # run_batch holds its lock; used here for names and publishing
        folder.earlier_outputs([job.name for job in jobs], resume, overwrite)

        def done_earlier(job) -> bool:
            return resume and not overwrite and folder.is_complete(job.name)

        def predict_one(job, loaded, image_progress):
            return _predict_one(predictor, job, loaded, folder, options, overwrite, resume, write_result,
                                image_progress, activation_maps)

        return run_batch(jobs, out_dir, predictor, predict_one, should_skip=done_earlier, ctx=ctx, workers=workers,
                         progress=progress, on_result=on_result, on_progress=on_progress, on_image=on_image)
    finally:
        ctx.close()


def _predict_one(predictor: Predictor, job, loaded, out, options, overwrite: bool, resume: bool, write_result,
                 on_progress=None, activation_count: int = 0, retry: bool = True):
    """One image of a batch, in two stages: the network's work here (on the thread that owns the
    device), then a ``finish()`` callable that writes and publishes the outputs and returns the
    summary row (the batch runs it on its writer thread, overlapped with the next image). An
    image that fails or needs no work returns its row directly. Every failure is caught and
    reported in the row; an unexpected error (not a bad input) is retried once."""
    name, path = job.name, job.path
    folder = out.root / name
    row: Dict[str, object] = {"image": str(path), "output": str(folder), "warnings": ""}
    if out.is_complete(name) and resume and not overwrite:
        row.update(status="done earlier", error="", **_earlier_findings(folder))
        return row
    if out.is_complete(name) and not overwrite:
        row.update(status="failed", output="",
                   error=str(MammoPatchError("outputs exist already (--resume skips them, --overwrite replaces them)",
                                             folder)))
        return row
    if out.in_the_way(name) is not None:  # a user's file or folder: never replaced
        row.update(status="failed", output="", error=str(MammoPatchError(out.in_the_way(name), path)))
        return row
    try:
        if isinstance(loaded, BaseException):
            raise loaded
        if loaded is None:
            image = read_mammogram(path, spacing_mm=job.spacing_mm)
            prepared = None
        else:
            image, prepared = loaded
        result = predictor.predict_image(image, on_progress=on_progress, prepared=prepared)
        maps = []
        if activation_count and result.findings:
            from .activation import activation_maps

            maps = activation_maps(predictor, image, result, activation_count)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the row
        if retry and _unexpected(exc):
            logger.warning("%s: unexpected %s (%s); retrying once", path, type(exc).__name__, exc)
            return _predict_one(predictor, job, None, out, options, overwrite, resume, write_result, on_progress,
                                activation_count, retry=False)
        return _failed(row, path, exc)

    def finish(retry: bool = True) -> Dict[str, object]:
        partial = None
        try:
            partial = out.partial(name)
            write_result(result, partial, overwrite=True, options=options, selected_classes=predictor.selected)
            if maps:
                from .activation import write_activation_maps

                write_activation_maps(maps, image.geometry, partial)
            out.publish(partial, name, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - reported in the row
            if retry and _unexpected(exc):
                logger.warning("%s: unexpected %s while writing (%s); retrying once", path, type(exc).__name__, exc)
                return finish(retry=False)
            return _failed(row, path, exc)
        finally:
            if partial is not None and partial.exists():
                import shutil

                shutil.rmtree(partial, ignore_errors=True)
        top = result.findings[0] if result.findings else None
        row.update(status="ok", error="", findings=len(result.findings),
                   top_class=top.category if top else "", top_score=f"{top.score:.4f}" if top else "",
                   seconds=f"{sum(result.timings.values()):.2f}", warnings="; ".join(image.warnings))
        return row

    return finish


def _unexpected(exc: BaseException) -> bool:
    """Worth a second try: not a bad input (MammoPatchError) and not memory."""
    return not isinstance(exc, (MammoPatchError, MemoryError))


def _failed(row: Dict[str, object], path: Path, exc: BaseException) -> Dict[str, object]:
    if isinstance(exc, MammoPatchError):
        logger.debug("%s", exc)
        error = str(exc)
    elif isinstance(exc, MemoryError):
        error = f"{path}: out of memory"
    else:
        logger.debug("%s: unexpected error", path, exc_info=exc)
        error = f"{path}: unexpected {type(exc).__name__}: {exc}"
    row.update(status="failed", error=error, output="")
    return row


def _earlier_findings(folder: Path) -> Dict[str, object]:
    """The summary columns of an image done by an earlier run, read from its findings.json, so
    a resumed batch's summary matches an uninterrupted one."""
    import json

    try:
        findings = json.loads((folder / "findings.json").read_text(encoding="utf-8"))["findings"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    top = findings[0] if findings else None
    return {"findings": len(findings), "top_class": top["category"] if top else "",
            "top_score": f"{top['score']:.4f}" if top else ""}


def preview_preprocessing(image_path: PathLike, out_png: PathLike, spacing_mm: Optional[float] = None,
                           overwrite: bool = True) -> Path:
    """Preprocess one image and write the preview PNG (source + crop box, three channels)."""
    from .io import write_png
    from .transforms import preprocess
    from .visualize import preprocessing_preview

    image = read_mammogram(image_path, spacing_mm=spacing_mm)
    prepared = preprocess(image)
    write_png(preprocessing_preview(image.pixels, prepared.tensor, prepared.analysed_box_in_source()), out_png,
              overwrite=overwrite)
    return out_png
