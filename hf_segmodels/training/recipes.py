"""The optimisation recipes of the four papers' released training configs, parameter groups with learning-rate
multipliers, and the (warmup +) polynomial learning-rate schedule of mmsegmentation / detectron2."""

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class Recipe:
    """An optimiser + schedule recipe.

    `head_lr_multiplier` multiplies the learning rate of every parameter outside the backbone (mmseg's
    `custom_keys={'head': lr_mult}`), `backbone_lr_multiplier` that of the backbone (detectron2's
    `BACKBONE_MULTIPLIER`). `no_decay_norm_and_embeddings` gives normalisation weights / biases and learned
    embeddings (position embeddings, tokens, queries) no weight decay. The learning rate follows
    `(lr - min_lr) * (1 - step / total) ** power + min_lr`, multiplied during the first `warmup_steps` by a linear ramp
    from `warmup_ratio` to 1 (mmcv's linear warmup). `lr_by_dataset` overrides `learning_rate` when the dataset name
    contains the key (SETR's Cityscapes models use 1e-2). `schedule="step"` replaces the polynomial decay by
    detectron2's `WarmupMultiStepLR`: the rate is multiplied by `gamma` at each of `milestones` (fractions of the
    schedule, e.g. MaskFormer's COCO step at 369600 of 554400 iterations = 2/3)."""

    optimizer: str
    learning_rate: float
    weight_decay: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    power: float = 0.9
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    head_lr_multiplier: float = 1.0
    backbone_lr_multiplier: float = 1.0
    no_decay_norm_and_embeddings: bool = False
    max_grad_norm: float | None = None
    lr_by_dataset: dict[str, float] = field(default_factory=dict)
    schedule: str = "poly"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    source: str = ""

    def describe(self) -> str:
        """One line for logs and model cards."""
        if self.schedule == "step":
            decay = f"step x{self.gamma:g} at {', '.join(f'{m:.3g}' for m in self.milestones)} of the schedule"
        else:
            decay = f"poly power {self.power:g}"
        return (f"{self.optimizer} lr {self.learning_rate:g}, weight decay {self.weight_decay:g}, {decay}, warmup "
                f"{self.warmup_steps}")

    def for_dataset(self, dataset_name: str | None) -> "Recipe":
        name = (dataset_name or "").lower()
        for key, lr in self.lr_by_dataset.items():
            if key in name:
                return replace(self, learning_rate=lr)
        return self


PAPER_RECIPES: dict[str, Recipe] = {
    # rstrudel/segmenter: SGD, lr 1e-3, momentum 0.9, no weight decay, PolynomialLR(power 0.9, min_lr 1e-5) per step.
    "segmenter": Recipe(
        optimizer="sgd", learning_rate=1e-3, weight_decay=0.0, power=0.9, min_lr=1e-5,
        source="Segmenter (segm/config.yml, segm/optim/scheduler.py)",
    ),
    # fudan-zvg/SETR configs: SGD lr 1e-3 (Cityscapes 1e-2), momentum 0.9, wd 0, head lr x10, poly 0.9 (min 1e-4).
    "setr": Recipe(
        optimizer="sgd", learning_rate=1e-3, weight_decay=0.0, power=0.9, min_lr=1e-4, head_lr_multiplier=10.0,
        lr_by_dataset={"cityscapes": 1e-2}, source="SETR (configs/SETR/*.py, schedule_*k.py)",
    ),
    # NVlabs/SegFormer: AdamW lr 6e-5, wd 0.01, head lr x10, no decay on norms / position blocks, poly(1.0) with a
    # 1500-step linear warmup from 1e-6.
    "segformer": Recipe(
        optimizer="adamw", learning_rate=6e-5, weight_decay=0.01, power=1.0, min_lr=0.0, warmup_steps=1500,
        warmup_ratio=1e-6, head_lr_multiplier=10.0, no_decay_norm_and_embeddings=True,
        source="SegFormer (local_configs/segformer/*.py)",
    ),
    # facebookresearch/MaskFormer (R50 configs): AdamW lr 1e-4, wd 1e-4 (0 on norms and embeddings), backbone lr x0.1,
    # poly 0.9, full-model gradient clipping at norm 0.01.
    "maskformer": Recipe(
        optimizer="adamw", learning_rate=1e-4, weight_decay=1e-4, power=0.9, min_lr=0.0, backbone_lr_multiplier=0.1,
        no_decay_norm_and_embeddings=True, max_grad_norm=0.01,
        source="MaskFormer (configs/ade20k-150/maskformer_R50_bs16_160k.yaml, Base-ADE20K-150.yaml)",
    ),
}

# facebookresearch/MaskFormer, configs/coco-panoptic/Base-COCO-PanopticSegmentation.yaml (+ maskformer_panoptic_R50_
# bs64_554k.yaml, detectron2's config defaults): AdamW lr 1e-4, wd 1e-4 (0 on norms: WEIGHT_DECAY_NORM 0.0, and on
# embeddings: WEIGHT_DECAY_EMBED 0.0), BACKBONE_MULTIPLIER 0.1, full-model gradient clipping at norm 0.01,
# WarmupMultiStepLR (detectron2's default LR_SCHEDULER_NAME) with GAMMA 0.1 at STEPS 369600 of MAX_ITER 554400 and
# WARMUP_ITERS 10 at WARMUP_FACTOR 1.0 (a constant factor 1: no warmup), IMS_PER_BATCH 64. The loss weights (MASK_FORMER.
# NO_OBJECT_WEIGHT 0.1, MASK_WEIGHT 20, DICE_WEIGHT 1, DEEP_SUPERVISION) are MaskFormerConfig's defaults.
MASKFORMER_PANOPTIC_RECIPE = Recipe(
    optimizer="adamw", learning_rate=1e-4, weight_decay=1e-4, backbone_lr_multiplier=0.1,
    no_decay_norm_and_embeddings=True, max_grad_norm=0.01, schedule="step", milestones=(369600 / 554400,), gamma=0.1,
    source="MaskFormer COCO panoptic (configs/coco-panoptic/Base-COCO-PanopticSegmentation.yaml, "
           "maskformer_panoptic_R50_bs64_554k.yaml; 554400 iterations at batch 64)",
)

_NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm, torch.nn.LocalResponseNorm)


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters of normalisation layers and learned embeddings (tokens, position / query embeddings)."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d"))
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if is_norm or isinstance(module, torch.nn.Embedding):
                names.add(full)
            elif any(key in full for key in ("position_embeddings", "pos_embed", "cls_token", "distillation_token",
                                              "cls_emb", "query_position")):
                names.add(full)
    return names


def parameter_groups(model: torch.nn.Module, recipe: Recipe, backbone_prefixes: tuple[str, ...]) -> list[dict]:
    """Optimiser parameter groups: backbone / head x (decay / no decay), each with its `lr` and `weight_decay`;
    empty groups are left out. Frozen parameters (requires_grad=False) are not optimised."""
    no_decay = _no_decay_names(model) if recipe.no_decay_norm_and_embeddings else set()
    groups: dict[tuple[str, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "backbone" if name.startswith(backbone_prefixes) else "head"
        groups.setdefault((part, name in no_decay), []).append(parameter)
    result = []
    for (part, decay_free), parameters in sorted(groups.items()):
        multiplier = recipe.backbone_lr_multiplier if part == "backbone" else recipe.head_lr_multiplier
        result.append({
            "params": parameters,
            "lr": recipe.learning_rate * multiplier,
            "weight_decay": 0.0 if decay_free else recipe.weight_decay,
            "name": f"{part}{'_no_decay' if decay_free else ''}",
        })
    return result


def build_optimizer(model: torch.nn.Module, recipe: Recipe, backbone_prefixes: tuple[str, ...]):
    groups = parameter_groups(model, recipe, backbone_prefixes)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.learning_rate, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=recipe.betas)
    raise ValueError(f"Unknown optimizer {recipe.optimizer!r}; use 'sgd' or 'adamw'.")


def poly_factor(step: int, total_steps: int, base_lr: float, recipe: Recipe) -> float:
    """Learning rate at `step` (0-based optimiser step) as a fraction of the group's `base_lr`."""
    progress = min(step, total_steps) / max(total_steps, 1)
    if recipe.schedule == "step":
        # detectron2's milestones are iteration numbers: the decay applies from step round(fraction * total) on
        lr = base_lr * recipe.gamma ** sum(step >= round(m * total_steps) for m in recipe.milestones)
    else:
        lr = (base_lr - recipe.min_lr) * (1.0 - progress) ** recipe.power + recipe.min_lr
    if recipe.warmup_steps > 0 and step < recipe.warmup_steps:
        lr *= 1.0 - (1.0 - step / recipe.warmup_steps) * (1.0 - recipe.warmup_ratio)
    return lr / base_lr if base_lr > 0 else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    """A `LambdaLR` stepped once per optimiser step implementing `poly_factor` for every group."""
    if total_steps < 1:
        raise ValueError(f"The schedule needs at least one training step, got {total_steps}.")
    lambdas = [
        (lambda step, base=group["lr"]: poly_factor(step, total_steps, base, recipe)) for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

