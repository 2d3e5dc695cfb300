"""Training data: prepare video folders once, read prepared and official datasets.

Modules: ``formats`` (the prepared directory layout), ``prepare`` (decoding a folder of
videos into that layout), ``prepare_synthetic`` (rendering AV-Shapes clips into it), ``runner``
(resumable parallel writing shared by both), ``base`` (sample assembly and augmentation order
shared by the datasets), ``datasets`` (``PreparedDataset``, splits, the ``build_dataset``
factory) and ``official`` (``OfficialJsonDataset`` over the official data lists).
Augmentations live in :mod:`training.augment`, samplers in :mod:`training.samplers`.
"""

from training.data.datasets import (
    FrameChoice,
    OfficialJsonDataset,
    PreparedDataset,
    build_dataset,
    split_dataset,
)
from training.data.formats import FORMAT_VERSION, is_prepared_dir, read_items, read_manifest
from training.data.prepare import (
    VIDEO_EXTENSIONS,
    official_frame_times,
    prepare_folder,
    read_label_mapping_csv,
)
from training.data.prepare_synthetic import prepare_synthetic
from training.data.runner import PrepareReport

__all__ = [
    "FORMAT_VERSION",
    "FrameChoice",
    "OfficialJsonDataset",
    "PrepareReport",
    "PreparedDataset",
    "VIDEO_EXTENSIONS",
    "build_dataset",
    "is_prepared_dir",
    "official_frame_times",
    "prepare_folder",
    "prepare_synthetic",
    "read_items",
    "read_label_mapping_csv",
    "read_manifest",
    "split_dataset",
]
