"""Training the segmentor: the loop (:mod:`.loop`), its optimizer and schedule (:mod:`.optim`),
device-side augmentation (:mod:`.augment`) and distributed setup (:mod:`.dist`).

The loop offers hooks and knows no method; ``npdg.recipes`` decides what each training mode plugs
in (docs/architecture.md).
"""

from npdg.train.augment import PhotometricAugment, random_scale_crop_flip
from npdg.train.dist import DistInfo, dist_from_env, setup_distributed
from npdg.train.loop import (
    BatchTransform,
    Callback,
    ExtraLoss,
    GradHook,
    Hooks,
    InfiniteSampler,
    OutOfMemory,
    Plugin,
    ProgressFn,
    TrainContext,
    TrainingDiverged,
    TrainResult,
    cross_entropy,
    make_batches,
    train,
    train_step,
)
from npdg.train.optim import build_optimizer, lr_factor, param_groups, set_lr

__all__ = [
    "BatchTransform", "Callback", "DistInfo", "ExtraLoss", "GradHook", "Hooks", "InfiniteSampler", "OutOfMemory",
    "PhotometricAugment", "Plugin", "ProgressFn", "TrainContext", "TrainResult", "TrainingDiverged",
    "build_optimizer", "cross_entropy", "dist_from_env", "lr_factor", "make_batches", "param_groups",
    "random_scale_crop_flip", "set_lr", "setup_distributed", "train", "train_step",
]
