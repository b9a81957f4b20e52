"""The Python API: ``predict`` for one image or array, ``predict_files`` for a batch.

Both run an image through the same three stages (:class:`~MammoPatchLib.prediction.stages.ImagePipeline`:
load, infer, write); ``predict_files`` hands them to the batch runner (:mod:`.prediction.runner`). The
CLI, the Slicer module's worker, the MONAI bundle and the batch script call these functions:
there is one pipeline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .prediction.folder import OutputFolder, output_stem  # noqa: F401 - output_stem is part of the API
from .distributed import RankContext, start_ranks
from .errors import ConfigError, MammoPatchError, ModelFileError
from .inference import PredictOptions, PredictionResult, Predictor
from .io import read_mammogram
from .prediction.jobs import plan_jobs
from .model_file import LoadedModel, load_model
from .results.files import OutputOptions
from .prediction.rows import Row
from .prediction.runner import ImageCallback, ProgressCallback, run_batch
from .prediction.stages import Failure, ImagePipeline, Loaded, ImageSource, image_from
from .vocabulary import PathLike

logger = logging.getLogger(__name__)

#: Where the bundled default model lives: Resources/ beside MammoPatchLib (source tree and the
#: Slicer extension both have this layout); $MAMMOPATCH_MODEL overrides it.
DEFAULT_MODEL_NAME = "mammopatch-default.pt"


def default_model_path() -> Path:
    """The model used when none is given: ``$MAMMOPATCH_MODEL``, else the bundled one."""
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


#: Read a file or wrap an array as a validated MammogramImage (stage 1's reading step).
as_image = image_from


def split_options(options: Optional[PredictOptions], outputs: Optional[OutputOptions],
                  option_fields: Dict[str, Any]) -> Tuple[Optional[PredictOptions], OutputOptions]:
    """``options`` and ``outputs`` with the single options given as keywords put in the one
    they belong to (``mode="exact"``, ``heatmaps="all"``); an unknown keyword is an error
    naming it. The prediction options stay None when none were given."""
    output_names = {f.name for f in fields(OutputOptions)}
    unknown = sorted(set(option_fields) - output_names - set(PredictOptions.names()))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}")
    predict_fields = {k: v for k, v in option_fields.items() if k not in output_names}
    output_fields = {k: v for k, v in option_fields.items() if k in output_names}
    if "formats" in output_fields:
        output_fields["formats"] = tuple(output_fields["formats"])
    if predict_fields:
        options = (options or PredictOptions()).updated(**predict_fields)
    return options, replace(outputs or OutputOptions(), **output_fields)


def _predictor(model: ModelLike, options: Optional[PredictOptions], predictor: Optional[Predictor]) -> Predictor:
    """The given predictor, or one built from ``model`` and ``options``; both is an error (the
    options would be silently unused)."""
    if predictor is not None:
        if options is not None or model is not None:
            raise ConfigError("give either a predictor or a model and prediction options, not both")
        return predictor
    options = options or PredictOptions()
    return Predictor(resolve_model(model, device="cpu"), options)


def predict(source: ImageSource, model: ModelLike = None, options: Optional[PredictOptions] = None,
            spacing_mm: Optional[float] = None, predictor: Optional[Predictor] = None,
            **option_fields: Any) -> PredictionResult:
    """Heatmaps, label map and findings for one mammogram (file path, array or MammogramImage).

    ``options`` (:class:`~MammoPatchLib.inference.PredictOptions`), or single options as
    keywords, say how the model runs; or pass an already built ``predictor`` instead.

    Example::

        from MammoPatchLib import predict
        result = predict("mammogram.dcm")          # bundled default model, fast mode
        result.heatmaps.shape                       # (10, rows, columns)
        result = predict("mammogram.dcm", mode="exact", device="cpu")

    Raises:
        MammoPatchError: the image cannot be read or analysed (the message names the file).
    """
    options, _ = split_options(options, None, option_fields)
    pipeline = ImagePipeline(_predictor(model, options, predictor))
    outcome = pipeline.load(source, spacing_mm)
    if isinstance(outcome, Loaded):
        outcome = pipeline.infer(outcome)
    if isinstance(outcome, Failure):
        outcome.reraise()
    return outcome.result


def predict_files(inputs, out_dir: PathLike, model: ModelLike = None, options: Optional[PredictOptions] = None,
                  outputs: Optional[OutputOptions] = None, predictor: Optional[Predictor] = None, *,
                  spacing_mm: Optional[float] = None, overwrite: bool = False, resume: bool = False,
                  progress: bool = True, workers: int = 2, on_image: Optional[ImageCallback] = None,
                  on_result: Optional[Callable[[Row], None]] = None,
                  on_progress: Optional[ProgressCallback] = None, **option_fields: Any) -> List[Row]:
    """Predict every image of files / folders / globs / manifest CSVs into ``out_dir``,
    crash-safely (:mod:`MammoPatchLib.prediction.folder`) and, under torchrun, sharded over the ranks
    (:mod:`MammoPatchLib.prediction.runner`): a bad file is reported and the batch goes on; each image's
    folder appears only when complete; ``out_dir/summary.csv`` lists every input.

    Args:
        options: how the model runs (:class:`~MammoPatchLib.inference.PredictOptions`).
        outputs: what is written per image (:class:`~MammoPatchLib.results.files.OutputOptions`).
        predictor: an already built Predictor, instead of ``model`` and ``options``.
        option_fields: single prediction or output options as keywords (``mode="exact"``,
            ``heatmaps="all"``), replacing those of ``options`` / ``outputs``.
        spacing_mm: pixel spacing for files that store none.
        resume: skip images whose output folder exists (done by an earlier, maybe killed, run).
        overwrite: recompute those and replace their folders.
        progress: progress bars (of the batch, and of each image in a single process).
        workers: threads reading and preprocessing the next images while the network runs.
        on_image: called with (index, count, path) before each image.
        on_result: called with each image's :class:`~MammoPatchLib.prediction.rows.Row` as soon as it is done.
        on_progress: called with (fraction of the batch, text) while it runs; raising
            :class:`~MammoPatchLib.errors.Cancelled` from it stops the batch.

    Raises:
        OutputError: ``out_dir`` cannot be written or another run holds it (before any image).
        MammoPatchError: no images found, a bad manifest, bad options, or the model cannot be
            loaded.
    """
    options, outputs = split_options(options, outputs, option_fields)
    if predictor is not None and (options is not None or model is not None):
        raise ConfigError("give either a predictor or a model and prediction options, not both")
    jobs = plan_jobs(inputs, spacing_mm, exclude=[out_dir])
    if not jobs:
        given = [inputs] if isinstance(inputs, (str, Path)) else inputs
        raise MammoPatchError("no images found", ", ".join(str(i) for i in given))
    options = options or PredictOptions()
    ctx = start_ranks(options.device if predictor is None else "cpu")
    try:
        if predictor is None:
            predictor = Predictor(resolve_model(model), _for_rank(options, ctx, progress))
        return run_batch(jobs, OutputFolder(out_dir), ImagePipeline(predictor, outputs), ctx=ctx, resume=resume,
                         overwrite=overwrite, workers=workers, progress=progress, on_image=on_image,
                         on_result=on_result, on_progress=on_progress)
    finally:
        ctx.close()


def _for_rank(options: PredictOptions, ctx: RankContext, progress: bool) -> PredictOptions:
    """The options on this rank: under torchrun each rank uses its own GPU, and shows no
    per-image bar (the ranks' bars would interleave)."""
    device = options.device
    if ctx.distributed and device in ("auto", "cuda"):
        import torch

        device = f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    return options.updated(device=device, progress=progress and not ctx.distributed)


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
