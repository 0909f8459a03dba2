"""Image loading and validation, dataset layouts and a synthetic defect generator."""

from defectscope.data.io import IMAGE_EXTENSIONS, check_images, read_image, read_mask
from defectscope.data.layouts import (
    Category,
    Sample,
    discover,
    labelled_defects,
    magnetic_tile,
    mvtec_category,
    plain_folder,
    training_images,
)
from defectscope.data.synthetic import DEFECT_KINDS, synthetic_images, write_mvtec_category

__all__ = [
    "DEFECT_KINDS",
    "IMAGE_EXTENSIONS",
    "Category",
    "Sample",
    "check_images",
    "discover",
    "labelled_defects",
    "magnetic_tile",
    "mvtec_category",
    "plain_folder",
    "read_image",
    "read_mask",
    "synthetic_images",
    "training_images",
    "write_mvtec_category",
]
