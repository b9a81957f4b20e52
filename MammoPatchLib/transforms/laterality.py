"""Optional laterality normalisation: flip so the chest wall is on the left of every image.

Right and left breasts then look alike to the network. The side is read from the
intensity mass (the chest wall side of a mammogram carries most of the breast), not from the
DICOM laterality tag, because display orientation (PatientOrientation) varies between
manufacturers. Whether the image was flipped is recorded on the MetaTensor, and
``inverse()`` flips a heatmap back.
"""

from __future__ import annotations

from typing import Dict, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Flip, InvertibleTransform, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor


def chest_wall_on_right(img) -> bool:
    """True when the right half of the image (channel 0 of a (C, H, W) image, or an (H, W)
    plane; tensor or array) holds more intensity than the left half: the one laterality rule
    that preprocessing, lesion synthesis and the other-breast alignment all read."""
    plane = torch.as_tensor(img)
    plane = plane[0] if plane.ndim == 3 else plane
    half = plane.shape[-1] // 2
    return bool(plane[:, half:].sum() > plane[:, :half].sum())


class NormaliseLaterality(InvertibleTransform, Transform):
    """Flip a (C, H, W) image left-right when its chest wall is on the right."""

    backend = [TransformBackends.TORCH]

    def __init__(self) -> None:
        self._flipper = Flip(spatial_axis=1)

    def __call__(self, img):
        data = convert_to_tensor(img, track_meta=True)
        flipped = chest_wall_on_right(data)
        if flipped:
            with self._flipper.trace_transform(False):
                out = self._flipper(data)
        else:
            out = data.clone()
        if not isinstance(out, MetaTensor):
            out = MetaTensor(out)
        self.push_transform(out, extra_info={"flipped": flipped}, orig_size=tuple(out.shape[1:]))
        return out

    def inverse(self, data):
        transform = self.pop_transform(data)
        if not transform["extra_info"]["flipped"]:
            return data
        with self._flipper.trace_transform(False):
            return self._flipper(data)


class NormaliseLateralityd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`NormaliseLaterality`: each key decides for itself, from
    its own intensity (:func:`chest_wall_on_right`), so give it image keys (a mask would be
    flipped by its own pixels, not by its image's)."""

    backend = NormaliseLaterality.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normaliser = NormaliseLaterality()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normaliser(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normaliser.inverse(d[key])
        return d
