"""A study from a PACS and the results back to it, over DICOMweb (dicomweb-client): QIDO-RS /
WADO-RS to fetch a study's mammograms, STOW-RS to store the DICOM outputs (SEG, heatmap SEG,
overlay Secondary Capture, SR) into the same study.

    mammopatch predict --from-dicomweb https://pacs.example.org/dicom-web --study 1.2.3... \\
                       --to-dicomweb https://pacs.example.org/dicom-web --out results

Authentication: a bearer token from $MAMMOPATCH_DICOMWEB_TOKEN, or user and password from
$MAMMOPATCH_DICOMWEB_USER / $MAMMOPATCH_DICOMWEB_PASSWORD (HTTP basic), are sent when set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from ..errors import MammoPatchError
from ..io.dicom import save_dicom
from ..vocabulary import PathLike

#: SOP classes of mammograms (and digital X-ray, which some archives use for them).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
}


def client(url: str):
    """A DICOMweb client for ``url`` with the credentials the environment gives."""
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise MammoPatchError("DICOMweb needs dicomweb-client: pip install 'MammoPatch[dicom]'") from None
    headers = {}
    token = os.environ.get("MAMMOPATCH_DICOMWEB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    session = None
    user = os.environ.get("MAMMOPATCH_DICOMWEB_USER")
    if user:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(user, os.environ.get("MAMMOPATCH_DICOMWEB_PASSWORD", ""))
    return DICOMwebClient(url=url, headers=headers or None, session=session)


def fetch_study(url: str, study_uid: str, folder: PathLike) -> List[Path]:
    """Download the mammograms of a study into ``folder`` (one file per instance); other
    instances (reports, earlier results) are left on the server."""
    import requests

    web = client(url)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        found = web.search_for_instances(study_instance_uid=study_uid)
    except requests.RequestException as exc:
        raise MammoPatchError(f"cannot search the study on the DICOMweb server ({exc})", url) from None
    paths = []
    for item in found:
        sop_class = item.get("00080016", {}).get("Value", [""])[0]
        if sop_class not in IMAGE_SOP_CLASSES:
            continue
        series = item["0020000E"]["Value"][0]
        instance = item["00080018"]["Value"][0]
        try:
            dataset = web.retrieve_instance(study_instance_uid=study_uid, series_instance_uid=series,
                                            sop_instance_uid=instance)
        except requests.RequestException as exc:
            raise MammoPatchError(f"cannot retrieve instance {instance} ({exc})", url) from None
        path = folder / f"{instance}.dcm"
        save_dicom(dataset, path)
        paths.append(path)
    if not paths:
        raise MammoPatchError(f"study {study_uid} has no mammogram on the server", url)
    return paths


def store(url: str, files: Sequence[PathLike]) -> int:
    """Store DICOM files on the server (STOW-RS); returns how many were stored."""
    import pydicom
    import requests

    if not files:
        return 0
    datasets = [pydicom.dcmread(f) for f in files]
    try:
        client(url).store_instances(datasets=datasets)
    except requests.RequestException as exc:
        raise MammoPatchError(f"cannot store the results on the DICOMweb server ({exc})", url) from None
    return len(datasets)
