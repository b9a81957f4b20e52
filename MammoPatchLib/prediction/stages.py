"""One image's pass through MammoPatch, in three stages, each a method of :class:`ImagePipeline`
(which owns the model and the output options):

1. :meth:`~ImagePipeline.load`: read the file (or wrap an array), validate it, check it
   against the model and preprocess it at every scale -> a :class:`Loaded`, or a
   :class:`Failure` naming the file and the cause;
2. :meth:`~ImagePipeline.infer`: the network, heatmaps, findings, label map (and the
   Grad-CAM maps asked for) -> an :class:`Inferred`, or a :class:`Failure`;
3. :meth:`~ImagePipeline.write`: every output file into a private folder, then published
   under the image's name in the batch's :class:`~MammoPatchLib.prediction.folder.OutputFolder` -> the
   image's summary :class:`~MammoPatchLib.prediction.rows.Row`, or a :class:`Failure`.

Each stage reads only what the one before made: the image is read once and checked once.
``predict`` runs stages 1 and 2; a batch (:mod:`MammoPatchLib.prediction.runner`) runs all three, and
decides the order, the threads, retries and resuming. A stage never raises for a bad image
(it returns a Failure, which the batch reports and goes past) except :class:`Cancelled`,
which stops everything.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from ..activation import ActivationMap, activation_maps, write_activation_maps
from ..errors import Cancelled, MammoPatchError
from ..inference.inferers import ProgressFn
from ..inference.predictor import PredictionResult, Predictor
from ..io import MammogramImage, read_mammogram
from ..io.image import DEFAULT_SPACING_MM, ImageGeometry
from ..io.readers import validate_pixels
from ..other_breast import BreastScores
from ..results.files import OutputOptions, write_result
from ..transforms import PreprocessedImage
from ..vocabulary import PathLike, Status
from .folder import OutputFolder
from .jobs import Stated
from .rows import Row

logger = logging.getLogger(__name__)

#: What ``load`` accepts: a file, pixels (rows x columns, high = dense) or an image already read.
ImageSource = Union[PathLike, np.ndarray, MammogramImage]


@dataclass(frozen=True)
class Loaded:
    """Stage 1's product: an image read, validated, checked against the model and preprocessed
    at each of the model's scales (what :meth:`Predictor.predict_image` takes as ``prepared``)."""

    source: str
    image: MammogramImage
    prepared: Tuple[PreprocessedImage, ...]


@dataclass(frozen=True)
class Inferred:
    """Stage 2's product: the prediction of a loaded image and its Grad-CAM maps (if asked)."""

    loaded: Loaded
    result: PredictionResult
    activation_maps: List[ActivationMap] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """A stage that could not finish for ``source``, and why."""

    source: str
    error: BaseException
    stage: str

    @property
    def worth_retrying(self) -> bool:
        """Not a bad input (a MammoPatchError says what is wrong with it) and not memory: an
        unexpected error (a lost device, a full disk) may not happen a second time."""
        return not isinstance(self.error, (MammoPatchError, MemoryError))

    @property
    def message(self) -> str:
        """One line naming the file and the cause (a MammoPatchError's own message names both)."""
        if isinstance(self.error, MammoPatchError):
            return str(self.error)
        if isinstance(self.error, MemoryError):
            return f"{self.source}: out of memory"
        return f"{self.source}: unexpected {type(self.error).__name__}: {self.error}"

    def row(self) -> Row:
        """The summary row of the input that failed."""
        return Row(image=self.source, status=Status.FAILED, error=self.message)

    def reraise(self) -> None:
        """Raise the error (for callers of a single image, which want the exception)."""
        raise self.error


def image_from(source: ImageSource, spacing_mm: Optional[float] = None) -> MammogramImage:
    """Read a file, or wrap an array (rows x columns, high = dense) with a pixel spacing (the
    default one when none is given, recorded as ``spacing_source="default"``); validated."""
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


def _source_name(source: ImageSource) -> str:
    if isinstance(source, MammogramImage):
        return str(source.path or "")
    if isinstance(source, np.ndarray):
        return ""
    return str(source)


class ImagePipeline:
    """The three stages of one image (see the module docstring) for one model and one set of
    output options. Thread use: :meth:`load` may run on several threads at once; :meth:`infer`
    on the one thread that owns the device; :meth:`write` on one other thread."""

    def __init__(self, predictor: Predictor, outputs: Optional[OutputOptions] = None) -> None:
        self.predictor = predictor
        self.outputs = outputs or OutputOptions()

    def load(self, source: ImageSource, spacing_mm: Optional[float] = None,
             stated: Optional[Stated] = None) -> Union[Loaded, Failure]:
        """Stage 1: read, validate, check against the model, preprocess; ``stated``: what a
        batch's manifest says of the film (study, view, side) where the file says nothing."""
        name = _source_name(source)
        try:
            image = image_from(source, spacing_mm)
            if stated is not None:
                stated.apply_to(image)
            return Loaded(source=name, image=image, prepared=self.predictor.prepare(image))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return Failure(name, exc, "load")

    def infer(self, loaded: Loaded, on_progress: Optional[ProgressFn] = None) -> Union[Inferred, Failure]:
        """Stage 2: the network's work (on the thread that owns the device). No Grad-CAM maps
        yet: a batch may still pick the findings again against the other breast
        (:meth:`against_other_breast`), and the maps are made once, for the findings written
        (:meth:`explain`)."""
        try:
            result = self.predictor.predict_image(loaded.image, on_progress=on_progress, prepared=loaded.prepared)
            return Inferred(loaded, result)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return Failure(loaded.source, exc, "infer")

    def explain(self, inferred: Inferred) -> Union[Inferred, Failure]:
        """The end of stage 2, once the image's findings are final: the Grad-CAM maps of its top
        findings when the outputs ask for them (on the thread that owns the device)."""
        if not self.outputs.activation_maps or not inferred.result.findings or inferred.activation_maps:
            return inferred
        try:
            maps = activation_maps(self.predictor, inferred.loaded.image, inferred.result,
                                   self.outputs.activation_maps)
            return Inferred(inferred.loaded, inferred.result, maps)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return Failure(inferred.loaded.source, exc, "infer")

    def against_other_breast(self, inferred: Inferred, other: Union[Inferred, BreastScores]) -> Inferred:
        """Stage 2 for one of a pair: ``inferred``'s findings picked again at the model's
        operating point for pairs, against ``other`` (the same view of her other breast, or what
        its findings.json records of it when it was done in an earlier run;
        :meth:`Predictor.against_other_breast`). On an unexpected error the image keeps its
        own reading, with a warning: nothing is lost."""
        scores = other if isinstance(other, BreastScores) else other.result
        try:
            result = self.predictor.against_other_breast(inferred.result, scores)
            return inferred if result is inferred.result else Inferred(inferred.loaded, result)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the single-image reading stands
            logger.warning("%s: could not read it against %s (%s); its findings are its own",
                           inferred.loaded.source, other.image if isinstance(other, BreastScores)
                           else other.loaded.source, exc)
            return inferred

    def write(self, inferred: Inferred, folder: OutputFolder, name: str) -> Union[Row, Failure]:
        """Stage 3: write every output into a private folder, publish it as ``folder/name``
        (replacing an older one: whether that may happen is the batch's decision, made before
        the image was loaded) and return the image's summary row."""
        result, image = inferred.result, inferred.loaded.image
        partial: Optional[Path] = None
        try:
            partial = folder.partial(name)
            write_result(result, partial, overwrite=True, options=self.outputs)
            if inferred.activation_maps:
                write_activation_maps(inferred.activation_maps, image.geometry, partial)
            final = folder.publish(partial, name, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return Failure(inferred.loaded.source, exc, "write")
        finally:
            if partial is not None and partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        top = result.findings[0] if result.findings else None
        return Row(image=inferred.loaded.source, status=Status.OK, findings=len(result.findings),
                   top_class=top.category if top else "", top_score=float(top.score) if top else None,
                   seconds=sum(result.timings.values()), output=str(final), warnings="; ".join(image.warnings))
