"""Data for the SAM/SAMPa benchmark: CIFAR-10/100 and synthetic datasets held on the training device.

Datasets live on the device as uint8; batches are cut, augmented and normalised there with vectorised
tensor ops, deterministically given the seed (and the epoch), identically on CPU and CUDA.
"""

from sampa.data.batches import Augment, EpochDraws, draw_epoch, eval_batches, num_batches, train_batches
from sampa.data.cifar import CIFAR_SOURCES, ENV_VAR, ChecksumError, CifarSource, DataUnavailableError
from sampa.data.dataset import (
    DATASET_NAMES,
    IMAGE_SIZES,
    NUM_CLASSES,
    SPLIT_NAMES,
    Dataset,
    ImageSplit,
    channel_stats,
    check_cutout,
    check_dataset_args,
    load_dataset,
)

__all__ = [
    "CIFAR_SOURCES",
    "DATASET_NAMES",
    "ENV_VAR",
    "IMAGE_SIZES",
    "NUM_CLASSES",
    "SPLIT_NAMES",
    "Augment",
    "ChecksumError",
    "CifarSource",
    "DataUnavailableError",
    "Dataset",
    "EpochDraws",
    "ImageSplit",
    "channel_stats",
    "check_cutout",
    "check_dataset_args",
    "draw_epoch",
    "eval_batches",
    "load_dataset",
    "num_batches",
    "train_batches",
]
