"""Results as DICOM objects a PACS and DICOM viewers understand, made with highdicom:

- a Segmentation (binary) of the label map: one segment per finding class present, coded with
  SNOMED CT (vocabulary.FINDING_CODES), referencing the source mammogram;
- a fractional Segmentation of the requested heatmaps (probability x 255 per pixel, one
  segment per class): what the issue calls "a Parametric Map or fractional SEG";
- a Secondary Capture of the overlay PNG, for viewers that display no SEG;
- a Comprehensive 3D SR measurement report: one planar ROI per finding (class as finding
  type, its box as an image-coordinate polyline, the score as a probability), one image
  group per class with a score (its highest probability), and an image group stating the CAD
  summary, "with findings" or "without findings" (an image on which nothing is reported gets
  every output too), with the algorithm identified by name, version and model SHA-256.

All four share the source's patient and study, each in its own new series. The library never
builds DICOM data sets by hand: highdicom checks each IOD; the two attributes highdicom
leaves out and dciodvfy asks for (the SEG's Patient Orientation, the capture's Laterality)
are the source's own.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import __version__
from ..errors import MammoPatchError
from ..io.atomic import atomic_path
from ..vocabulary import FINDING_CATEGORY_CODE, FINDING_CODES, PathLike

#: Series numbers of the four outputs (the source's own are usually small).
SERIES_NUMBERS = {"seg": 9001, "heatmaps": 9002, "overlay": 9003, "report": 9004}
#: Type 2 patient / study attributes highdicom copies from the source (MG IOD: present, may be empty).
TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _code(name: str):
    from pydicom.sr.coding import Code

    value, scheme, meaning = FINDING_CODES[name]
    return Code(value, scheme, meaning)


def _category_code():
    """Every finding segment's SegmentedPropertyCategory (the one definition is vocabulary's,
    which the Slicer module's terminology reads too)."""
    from pydicom.sr.coding import Code

    return Code(*FINDING_CATEGORY_CODE)


def _complete_source(path: PathLike):
    """The source data set with missing type 2 attributes added empty (real files omit some)."""
    import pydicom

    try:
        source = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise MammoPatchError(f"DICOM outputs need a DICOM input ({type(exc).__name__})", path) from None
    source = copy.deepcopy(source)
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


#: File name of each DICOM output, by kind (the result manifest lists them by these kinds).
DICOM_OUTPUT_FILES = {"seg": "findings_seg.dcm", "heatmaps": "heatmaps_seg.dcm", "overlay": "overlay_sc.dcm",
                      "report": "findings_sr.dcm"}


def _save(dataset, path: Path) -> str:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp)
    return str(path)


def write_dicom_outputs(result, out_dir: PathLike, heatmap_classes: Sequence[str],
                        overlay_rgb: Optional[np.ndarray] = None,
                        heatmaps: Optional[np.ndarray] = None) -> Dict[str, str]:
    """Write SEG, heatmap SEG, overlay SC and SR for a prediction of a DICOM mammogram into
    ``out_dir``; returns {kind: path}. ``heatmaps``: the (len(heatmap_classes), H, W) maps at
    every source pixel when the caller has them already (else they are computed)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _complete_source(result.image.path)
    out = Path(out_dir)
    written: Dict[str, str] = {}
    algorithm_name = "MammoPatch"
    sha = str(result.model_sha256 or "")
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   parameters={"model_sha256": sha} if sha else None)
    # Every segment keeps its frame, empty ones included: highdicom 0.28 fails on a fractional
    # SEG whose frames are all empty when asked to omit them (an image where nothing is found).
    common = dict(manufacturer="MammoPatch", manufacturer_model_name="MammoPatch sliding-patch classifier",
                  software_versions=__version__, device_serial_number=sha[:16] or "unknown", omit_empty_frames=False)

    def description(number: int, name: str):
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=_category_code(),
            segmented_property_type=_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)

    scored = _scored_classes(result)
    segmented = _segmented_classes(result, scored)
    if segmented:
        masks = np.stack([result.label_map == result.classes.index(name) + 1 for name in segmented], axis=-1)[None]
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description(i + 1, name) for i, name in enumerate(segmented)],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["seg"], sop_instance_uid=hd.UID(),
            instance_number=1, series_description="MammoPatch findings", **common)
        written["seg"] = _save(_oriented(seg, source), out / DICOM_OUTPUT_FILES["seg"])
    kept = [k for k, name in enumerate(heatmap_classes) if name in scored]
    if kept:
        if heatmaps is None:
            heatmaps = result.heatmaps_every(1, [result.classes.index(heatmap_classes[k]) for k in kept])
        else:
            heatmaps = heatmaps[kept]
        maps = np.moveaxis(heatmaps, 0, -1)[None]
        heat = hd.seg.Segmentation(
            source_images=[source], pixel_array=maps.astype(np.float32),
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255,
            segment_descriptions=[description(i + 1, heatmap_classes[k]) for i, k in enumerate(kept)],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["heatmaps"], sop_instance_uid=hd.UID(),
            instance_number=1, series_description="MammoPatch heatmaps (probability)", **common)
        written["heatmaps"] = _save(_oriented(heat, source), out / DICOM_OUTPUT_FILES["heatmaps"])
    if overlay_rgb is not None:
        written["overlay"] = _save(_overlay_capture(source, overlay_rgb), out / DICOM_OUTPUT_FILES["overlay"])
    sr = _findings_report(result, source, algorithm_name, sha, scored)
    written["report"] = _save(sr, out / DICOM_OUTPUT_FILES["report"])
    return written


def _scored_classes(result) -> Dict[str, float]:
    """{class: highest probability} of the classes that carry a score, as findings.json's
    ``class_maxima`` (a class the model never learned carries none: no segment, no maximum)."""
    return {name: float(value) for name, value in result.breast_scores().class_maxima.items() if value is not None}


def _segmented_classes(result, scored: Dict[str, float]) -> List[str]:
    """The findings SEG's segments: each class the label map marks, or, on an image where
    nothing is reported, each reported class that carries a score, as an empty segment (a
    SEG holds at least one segment; an empty one says the class was looked for and not found)."""
    present = [name for k, name in enumerate(result.classes) if (result.label_map == k + 1).any()]
    if present:
        return present
    wanted = result.reported_classes or result.classes
    return [name for name in result.classes if name in wanted and name in scored]


def _oriented(image, source):
    """A SEG or capture of the source's pixels with the source's Patient Orientation (General
    Image, type 2C for an image without a patient coordinate system, as a projection
    mammogram is; empty where the source states none): highdicom omits it from a SEG and takes
    single letters only for a capture."""
    image.PatientOrientation = source.get("PatientOrientation", "") or ""
    return image


def _laterality(source) -> Optional[str]:
    """The source's laterality, "L" or "R", for the capture's series (type 2C for a paired
    organ); None where the source states neither."""
    value = str(source.get("ImageLaterality", "") or source.get("Laterality", "") or "").strip().upper()
    return value if value in ("L", "R") else None


def _overlay_capture(source, overlay_rgb: np.ndarray):
    """The overlay PNG's picture as a Secondary Capture in the source's place."""
    import highdicom as hd

    # highdicom takes one letter per direction: it gets the first letters (any valid pair where
    # the source states none), then the capture gets the source's own values (an MLO's "A", "FR").
    letters = tuple(str(value)[:1] for value in source.get("PatientOrientation", []) or [])
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(overlay_rgb[..., :3], dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["overlay"], instance_number=1,
        manufacturer="MammoPatch", laterality=_laterality(source), series_description="MammoPatch overlay",
        patient_orientation=letters if len(letters) == 2 and all(c and c in "APRLHF" for c in letters) else ("A", "R"))
    return _oriented(capture, source)


def _findings_report(result, source, algorithm_name: str, sha: str, scored: Dict[str, float]):
    """The findings as a Comprehensive 3D SR measurement report: one planar region (the box)
    with its class and probability per finding, then the image's CAD summary (with or without
    findings) and each scored class's highest probability, so that a report exists, and says
    so, when nothing is reported (TID 1500 holds at least one measurement group)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    report_algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=__version__,
                                                     parameters=[f"model sha256 {sha}"] if sha else None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm_name, manufacturer_name="MammoPatch", model_name=__version__))
    unit = Code("1", "UCUM", "no units")
    groups: List = []
    for index, finding in enumerate(result.findings, start=1):
        x0, y0, x1, y1 = (float(v) for v in finding.box_px)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"finding {index}"),
            referenced_region=region, finding_type=_code(finding.category), algorithm_id=report_algorithm,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(finding.score), 6),
                                            unit=unit, algorithm_id=report_algorithm)]))
    image = [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
    summary = (codes.DCM.AllAlgorithmsSucceededWithFindings if result.findings
               else codes.DCM.AllAlgorithmsSucceededWithoutFindings)
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image summary"),
        algorithm_id=report_algorithm, source_images=image,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary, summary)]))
    for name, value in scored.items():
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"highest {name}"[:64]),
            finding_type=_code(name), algorithm_id=report_algorithm, source_images=image,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(value, 6), unit=unit,
                                            derivation=codes.SCT.Maximum, algorithm_id=report_algorithm)]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.Mammography, imaging_measurements=groups,
                                     title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(evidence=[source], content=report, series_number=SERIES_NUMBERS["report"],
                                 series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1,
                                 manufacturer="MammoPatch", series_description="MammoPatch findings report")
    return sr
