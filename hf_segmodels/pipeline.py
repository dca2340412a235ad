"""`pipeline("image-segmentation")` that runs a checkpoint's recorded test protocol.

Why a pipeline class: the protocol (sliding windows of the training crop, averaged scores) is a way of *using* the
model, not a different model. Putting it in the model's eval-mode `forward` would change what `forward` returns
depending on the mode (logits at full resolution instead of the output stride) and put a Python loop over windows in
the graph that `torch.export` traces; putting it in the image processor is impossible (the processor never sees the
model). A pipeline class keeps `forward` (training, `logits` shapes, export) as it is and gives the pipeline what
`hf_segmodels.infer_logits` gives by default.

`import hf_segmodels` makes this class the implementation of the "image-segmentation" task. It only changes what
happens for models that record a `config.test_protocol` (ours, converted or trained with this package); every other
model, and ours without a protocol, go through transformers' `ImageSegmentationPipeline` unchanged.
"""

import numpy as np
import PIL.Image
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

from .image_processing import crop_to_pixel_mask, panoptic_from_class_scores, resized_class_scores, semantic_map
from .fast_path import from_environment as fastest_from_environment
from .inference import _protocol_window, infer_logits
from .protocol import get_test_protocol

TASK = "image-segmentation"


class ProtocolImageSegmentationPipeline(ImageSegmentationPipeline):
    """transformers' `ImageSegmentationPipeline`, running our checkpoints the way their originals are evaluated.

    For our models the image is resized by the image processor (the converters give it the protocol's resize), the
    class scores are `hf_segmodels.infer_logits(model, pixel_values)` (whole image or sliding windows as
    `config.test_protocol` says, single scale; whole image when the checkpoint records no protocol), resized
    bilinearly to the input image's size as the originals do, and every class present in their argmax becomes one
    mask: with `score` None (semantic, the default, as transformers' pipeline answers for semantic models), or, for
    `subtask="panoptic"`, scored by the class's mean probability over it (as `post_process_panoptic_segmentation` of
    the per-pixel models).
    MaskFormer checkpoints whose protocol is panoptic (or that record none), and `subtask="panoptic"` /
    `"instance"` requests to MaskFormer, run the model's whole-image forward and the image processor's panoptic /
    instance post-processing, as detectron2 evaluates them. Other models go through transformers' code unchanged.

    Call arguments, besides transformers' (`subtask`, `threshold`, `mask_threshold`, `overlap_mask_area_threshold`,
    `timeout`): `protocol=False` asks for plain whole-image inference at the image processor's size, ignoring the
    recorded window and stride (`infer_logits(..., protocol=False)`).
    """

    def _sanitize_parameters(self, protocol=None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if protocol is not None:
            forward["protocol"] = bool(protocol)
        if "subtask" in kwargs:
            forward["subtask"] = kwargs["subtask"]
        return preprocess, forward, postprocess

    def _uses_class_scores(self, subtask: str | None) -> bool:
        if not hasattr(self.model, "full_resolution_logits"):
            return False  # not one of ours
        if not hasattr(self.model.config, "num_queries"):
            return True  # per-pixel models derive every sub-task from their class scores
        # MaskFormer: semantic from the class scores; panoptic and instance need its query outputs.
        recorded = get_test_protocol(self.model)
        return (subtask or (recorded.task if recorded is not None else None)) == "semantic"

    def _forward(self, model_inputs, protocol: bool = True, subtask: str | None = None):
        if not self._uses_class_scores(subtask):
            return super()._forward(model_inputs)
        target_size = model_inputs.pop("target_size")
        pixel_values = model_inputs["pixel_values"]
        if "pixel_mask" in model_inputs:
            # A padding processor (MaskFormer): the image's own extent; full_resolution_logits pads as the original.
            pixel_values = crop_to_pixel_mask(pixel_values, model_inputs["pixel_mask"][0])
        if subtask not in ("panoptic", "instance") and self._map_without_scores(pixel_values, target_size, protocol):
            model = fastest_from_environment(self.model)
            labels = model.full_resolution_semantic_map(pixel_values)[0]
            return {"protocol_labels": labels, "target_size": target_size}
        logits = infer_logits(self.model, pixel_values, protocol=protocol)
        return {"protocol_scores": SemanticSegmenterOutput(logits=logits), "target_size": target_size}

    def _map_without_scores(self, pixel_values, target_size, protocol: bool) -> bool:
        """Whether the semantic map is the model's `full_resolution_semantic_map` (MaskFormer: the argmax of its
        whole-image scores, computed without the (num_labels, H, W) scores): whole-image protocol and an image the
        processor did not resize, so that the scores would not be resized before their argmax."""
        if not hasattr(self.model, "full_resolution_semantic_map"):
            return False
        if protocol and _protocol_window(self.model)[0] is not None:
            return False  # sliding windows average scores
        return [tuple(int(v) for v in size) for size in target_size] == [tuple(pixel_values.shape[-2:])]

    def postprocess(self, model_outputs, subtask=None, **kwargs):
        if "protocol_scores" not in model_outputs and "protocol_labels" not in model_outputs:
            if hasattr(self.model, "full_resolution_logits") and hasattr(self.image_processor, "overlap_threshold"):
                # Our MaskFormer: thresholds the caller did not give are the checkpoint's (its release's test
                # settings, recorded in the processor), not transformers' generic 0.9 / 0.5.
                kwargs.setdefault("threshold", None)
                kwargs.setdefault("overlap_mask_area_threshold", None)
            return super().postprocess(model_outputs, subtask=subtask, **kwargs)
        if "protocol_labels" in model_outputs or subtask not in ("panoptic", "instance"):
            # Semantic (the default, as transformers' pipeline gives for semantic models): one mask per class present
            # in the argmax map, no score.
            if "protocol_labels" in model_outputs:
                segmentation = model_outputs["protocol_labels"].numpy()
            else:
                logits = model_outputs["protocol_scores"].logits
                segmentation = semantic_map(resized_class_scores(logits.float(), model_outputs["target_size"])[0])
                segmentation = segmentation.numpy()
            labels = np.flatnonzero(np.bincount(segmentation.ravel()))
            return [
                {"score": None, "label": self.model.config.id2label[int(label)], "mask": _mask(segmentation == label)}
                for label in labels
            ]
        # Panoptic / instance requested of a per-pixel model: every class present is one segment, scored by its mean
        # probability (`post_process_panoptic_segmentation` of our per-pixel processors).
        scores = resized_class_scores(model_outputs["protocol_scores"].logits.float(), model_outputs["target_size"])[0]
        segments = panoptic_from_class_scores(scores, set())
        segmentation = segments["segmentation"].numpy()
        return [
            {
                "score": segment["score"],
                "label": self.model.config.id2label[segment["label_id"]],
                "mask": _mask(segmentation == segment["id"]),
            }
            for segment in segments["segments_info"]
        ]


def _mask(selected: np.ndarray) -> PIL.Image.Image:
    """A boolean (H, W) map as transformers' pipeline returns masks: an 8-bit image, 255 on the segment."""
    return PIL.Image.fromarray(selected.astype(np.uint8) * 255, mode="L")


def register_pipeline() -> None:
    """Makes `ProtocolImageSegmentationPipeline` the implementation of `pipeline("image-segmentation")`, keeping
    the task's model classes and default."""
    PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] = ProtocolImageSegmentationPipeline


__all__ = ["ProtocolImageSegmentationPipeline", "register_pipeline"]
