"""Training and evaluation support for `examples/train.py` and `examples/evaluate.py`: the architecture registry,
the papers' recipes, mmsegmentation-style augmentation, dataset handling, atomic checkpoints and the evaluation
loop. Not imported by `import hf_segmodels`; import it explicitly."""

from .augmentation import TrainAugmentation, photometric_distortion, random_crop, random_flip, random_resize
from .checkpointing import latest_checkpoint, resolve_checkpoint, save_checkpoint
from .recipes import PAPER_RECIPES, Recipe, build_optimizer, build_scheduler, parameter_groups
from .registry import ARCHITECTURE_NAMES, Architecture, build_config, convert_sync_batch_norm, get_architecture

__all__ = [
    "ARCHITECTURE_NAMES",
    "Architecture",
    "PAPER_RECIPES",
    "Recipe",
    "TrainAugmentation",
    "build_config",
    "build_optimizer",
    "build_scheduler",
    "convert_sync_batch_norm",
    "get_architecture",
    "latest_checkpoint",
    "parameter_groups",
    "photometric_distortion",
    "random_crop",
    "random_flip",
    "random_resize",
    "resolve_checkpoint",
    "save_checkpoint",
]
