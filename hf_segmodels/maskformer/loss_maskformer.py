"""MaskFormer's training loss: Hungarian matching of queries to ground-truth segments, cross-entropy with a no-object
weight, sigmoid focal and dice losses on the matched masks (and on every decoder layer's predictions)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .configuration_maskformer import MaskFormerConfig


def pairwise_sigmoid_focal_cost(
    mask_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss of every prediction (Q, P) against every binary target (N, P): (Q, N)."""
    probabilities = mask_logits.sigmoid()
    focal_positive = alpha * (1 - probabilities) ** gamma * F.softplus(-mask_logits)
    focal_negative = (1 - alpha) * probabilities**gamma * F.softplus(mask_logits)
    cost = focal_positive @ targets.T + focal_negative @ (1 - targets).T
    return cost / mask_logits.shape[1]


def pairwise_dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (with +1 smoothing) of every prediction (Q, P) against every binary target (N, P): (Q, N)."""
    probabilities = mask_logits.sigmoid()
    numerator = 2 * probabilities @ targets.T
    denominator = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_focal_loss(
    mask_logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss of matched (M, P) predictions / targets, averaged over pixels, summed over masks and
    divided by `num_masks`."""
    probabilities = mask_logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * cross_entropy * (1 - p_t) ** gamma
    return loss.mean(1).sum() / num_masks


def dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """Dice loss of matched (M, P) predictions / targets, summed over masks and divided by `num_masks`."""
    probabilities = mask_logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class MaskFormerHungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments minimising class cost (1 - probability, weight
    `cost_class`) + focal mask cost (`cost_mask`) + dice cost (`cost_dice`), with the ground-truth masks
    downsampled (nearest) to the prediction resolution; solved with `scipy.optimize.linear_sum_assignment`."""

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: torch.Tensor,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns, per image, (query indices, target indices) of the matched pairs."""
        indices = []
        for mask_logits, class_logits, targets, classes in zip(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels
        ):
            if len(classes) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            targets = F.interpolate(targets[:, None].to(mask_logits.dtype), size=mask_logits.shape[-2:], mode="nearest")
            targets = targets[:, 0].flatten(1)
            mask_logits = mask_logits.flatten(1)
            cost = (
                -self.cost_class * class_logits.softmax(-1)[:, classes]
                + self.cost_mask * pairwise_sigmoid_focal_cost(mask_logits, targets)
                + self.cost_dice * pairwise_dice_cost(mask_logits, targets)
            )
            # Non-finite costs (a diverging model) are matched last instead of crashing the solver.
            maximum = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=maximum, posinf=maximum, neginf=maximum)
            query_indices, target_indices = linear_sum_assignment(cost.float().cpu().numpy())
            indices.append((torch.as_tensor(query_indices, dtype=torch.int64),
                            torch.as_tensor(target_indices, dtype=torch.int64)))
        return indices


class MaskFormerLoss(nn.Module):
    """The set prediction loss of the original `SetCriterion`: after Hungarian matching, cross-entropy over the
    classes of every query (unmatched queries are "no object", weighted `no_object_weight`), and sigmoid focal +
    dice losses of the matched masks, the predictions upsampled (bilinear) to the ground-truth resolution. Mask
    losses are normalised by the number of ground-truth segments in the batch (averaged over processes)."""

    def __init__(self, config: MaskFormerConfig):
        super().__init__()
        self.num_labels = config.num_labels
        self.matcher = MaskFormerHungarianMatcher(1.0, config.mask_weight, config.dice_weight)
        self.weights = {
            "loss_cross_entropy": config.cross_entropy_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.register_buffer("class_weights", self.default_class_weights(config), persistent=False)

    @staticmethod
    def default_class_weights(config: MaskFormerConfig) -> torch.Tensor:
        """Cross-entropy class weights: 1 for every class, `no_object_weight` for "no object"."""
        class_weights = torch.ones(config.num_labels + 1)
        class_weights[-1] = config.no_object_weight
        return class_weights

    @staticmethod
    def num_masks(class_labels: list[torch.Tensor], device) -> torch.Tensor:
        num_masks = torch.tensor(float(sum(len(classes) for classes in class_labels)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        return num_masks.clamp(min=1)

    def single_layer(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels, num_masks):
        """The three unweighted losses of one decoder layer's predictions."""
        indices = self.matcher(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
        batch_index = torch.cat([torch.full_like(queries, i) for i, (queries, _) in enumerate(indices)])
        query_index = torch.cat([queries for queries, _ in indices])
        device = class_queries_logits.device

        target_classes = torch.full(class_queries_logits.shape[:2], self.num_labels, dtype=torch.int64, device=device)
        target_classes[batch_index, query_index] = torch.cat(
            [classes[targets.to(classes.device)] for classes, (_, targets) in zip(class_labels, indices)]
        ).to(device)
        loss_ce = F.cross_entropy(
            class_queries_logits.transpose(1, 2), target_classes, weight=self.class_weights.to(class_queries_logits.dtype)
        )

        predicted = masks_queries_logits[batch_index, query_index]
        targets = torch.cat([masks[targets.to(masks.device)] for masks, (_, targets) in zip(mask_labels, indices)])
        targets = targets.to(device=device, dtype=predicted.dtype)
        if predicted.shape[0] == 0:
            # no ground-truth segment in the batch: only the "no object" classification is supervised
            zero = masks_queries_logits.sum() * 0.0
            return {"loss_cross_entropy": loss_ce, "loss_mask": zero, "loss_dice": zero}
        predicted = F.interpolate(predicted[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)
        predicted = predicted.flatten(1)
        targets = targets.flatten(1)
        return {
            "loss_cross_entropy": loss_ce,
            "loss_mask": sigmoid_focal_loss(predicted, targets, num_masks),
            "loss_dice": dice_loss(predicted, targets, num_masks),
        }

    def forward(
        self,
        masks_queries_logits: torch.Tensor,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total loss and the weighted individual losses (`loss_dice`, `loss_mask_0`, ...)."""
        num_masks = self.num_masks(class_labels, masks_queries_logits.device)
        losses = self.single_layer(masks_queries_logits, class_queries_logits, mask_labels, class_labels, num_masks)
        for index, auxiliary in enumerate(auxiliary_outputs or ()):
            layer_losses = self.single_layer(
                auxiliary["masks_queries_logits"], auxiliary["class_queries_logits"], mask_labels, class_labels,
                num_masks,
            )
            losses.update({f"{name}_{index}": value for name, value in layer_losses.items()})
        weighted = {name: value * self.weights[name.rsplit("_", 1)[0] if name[-1].isdigit() else name]
                    for name, value in losses.items()}
        return sum(weighted.values()), weighted
