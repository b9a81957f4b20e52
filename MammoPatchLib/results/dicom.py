"""Results as DICOM objects a PACS and DICOM viewers understand, made with highdicom:

- a Segmentation (binary) of the label map: one segment per finding class present, coded with
  SNOMED CT (vocabulary.FINDING_CODES), referencing the source mammogram;
- a fractional Segmentation of the requested heatmaps (probability x 255 per pixel, one
  segment per class): what the issue calls "a Parametric Map or fractional SEG";
- a Secondary Capture of the overlay PNG, for viewers that display no SEG;
- a Comprehensive 3D SR measurement report: one planar ROI per finding (class as finding
  type, its box as an image-coordinate polyline, the score as a probability), with the
  algorithm identified by name, version and model SHA-256.

All four share the source's patient and study, each in its own new series. The library never
builds DICOM data sets by hand: highdicom checks each IOD.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import __version__
from ..errors import MammoPatchError
from ..io.atomic import atomic_path
from ..vocabulary import FINDING_CODES, PathLike

#: Series numbers of the four outputs (the source's own are usually small).
SERIES_NUMBERS = {"seg": 9001, "heatmaps": 9002, "overlay": 9003, "report": 9004}
#: Type 2 patient / study attributes highdicom copies from the source (MG IOD: present, may be empty).
TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _code(name: str):
    from pydicom.sr.coding import Code

    value, scheme, meaning = FINDING_CODES[name]
    return Code(value, scheme, meaning)


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
    common = dict(manufacturer="MammoPatch", manufacturer_model_name="MammoPatch sliding-patch classifier",
                  software_versions=__version__, device_serial_number=sha[:16] or "unknown")

    def description(number: int, name: str):
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)

    present = [name for k, name in enumerate(result.classes) if (result.label_map == k + 1).any()]
    if present:
        masks = np.stack([result.label_map == result.classes.index(name) + 1 for name in present], axis=-1)[None]
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description(i + 1, name) for i, name in enumerate(present)],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["seg"], sop_instance_uid=hd.UID(),
            instance_number=1, series_description="MammoPatch findings", **common)
        written["seg"] = _save(seg, out / DICOM_OUTPUT_FILES["seg"])
    if heatmap_classes:
        if heatmaps is None:
            heatmaps = result.heatmaps_every(1, [result.classes.index(name) for name in heatmap_classes])
        maps = np.moveaxis(heatmaps, 0, -1)[None]
        heat = hd.seg.Segmentation(
            source_images=[source], pixel_array=maps.astype(np.float32),
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255,
            segment_descriptions=[description(i + 1, name) for i, name in enumerate(heatmap_classes)],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["heatmaps"], sop_instance_uid=hd.UID(),
            instance_number=1, series_description="MammoPatch heatmaps (probability)", **common)
        written["heatmaps"] = _save(heat, out / DICOM_OUTPUT_FILES["heatmaps"])
    if overlay_rgb is not None:
        written["overlay"] = _save(_overlay_capture(source, overlay_rgb), out / DICOM_OUTPUT_FILES["overlay"])
    sr = _findings_report(result, source, algorithm_name, sha)
    written["report"] = _save(sr, out / DICOM_OUTPUT_FILES["report"])
    return written


def _overlay_capture(source, overlay_rgb: np.ndarray):
    """The overlay PNG's picture as a Secondary Capture in the source's place."""
    import highdicom as hd

    orientation = tuple(source.get("PatientOrientation", ["A", "R"]) or ["A", "R"])
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(overlay_rgb[..., :3], dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["overlay"], instance_number=1,
        manufacturer="MammoPatch", patient_orientation=orientation[:2],
        series_description="MammoPatch overlay")


def _findings_report(result, source, algorithm_name: str, sha: str):
    """The findings as a Comprehensive 3D SR measurement report: one planar region (the box)
    with its class and probability per finding."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    report_algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=__version__,
                                                     parameters=[f"model sha256 {sha}"] if sha else None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm_name, manufacturer_name="MammoPatch", model_name=__version__))
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
                                            unit=Code("1", "UCUM", "no units"), algorithm_id=report_algorithm)]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.Mammography, imaging_measurements=groups or None,
                                     title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(evidence=[source], content=report, series_number=SERIES_NUMBERS["report"],
                                 series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1,
                                 manufacturer="MammoPatch", series_description="MammoPatch findings report")
    return sr
