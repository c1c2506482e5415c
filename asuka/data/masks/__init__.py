"""Inpainting masks (True / 1 = hole): the paper's mixed generator and its parts (spec 1.3, 7)."""
from asuka.data.masks.build import build_mask_generator
from asuka.data.masks.mixed import GENERATOR_VERSION, KINDS, MixedMaskGenerator, clip_hole_ratio
from asuka.data.masks.objects import (
    CocoObjectShapes,
    FolderObjectShapes,
    ObjectMaskGenerator,
    ObjectShape,
    SyntheticObjectShapes,
    build_object_source,
)
from asuka.data.masks.strokes import CoModIrregular, ComplementRectangleMask, LamaIrregular, RectangleMask

__all__ = [
    "KINDS",
    "CoModIrregular",
    "CocoObjectShapes",
    "ComplementRectangleMask",
    "FolderObjectShapes",
    "GENERATOR_VERSION",
    "LamaIrregular",
    "MixedMaskGenerator",
    "ObjectMaskGenerator",
    "ObjectShape",
    "RectangleMask",
    "SyntheticObjectShapes",
    "build_mask_generator",
    "build_object_source",
    "clip_hole_ratio",
]
