from .configuration_segformer import SEGFORMER_PRESETS, SegformerConfig
from .image_processing_segformer import SegformerImageProcessor
from .modeling_segformer import SegformerForSemanticSegmentation, SegformerModel, SegformerPreTrainedModel
from .._auto import register_architecture

register_architecture(
    SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, base_model_class=SegformerModel
)

__all__ = [
    "SEGFORMER_PRESETS",
    "SegformerConfig",
    "SegformerForSemanticSegmentation",
    "SegformerImageProcessor",
    "SegformerModel",
    "SegformerPreTrainedModel",
]
