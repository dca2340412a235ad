from transformers import AutoModelForInstanceSegmentation, AutoModelForUniversalSegmentation

from .._auto import register_architecture
from .configuration_maskformer import MaskFormerConfig
from .image_processing_maskformer import MaskFormerImageProcessor
from .modeling_maskformer import MaskFormerForUniversalSegmentation, MaskFormerPreTrainedModel

register_architecture(
    MaskFormerConfig,
    MaskFormerForUniversalSegmentation,
    MaskFormerImageProcessor,
    extra_auto_classes=(AutoModelForUniversalSegmentation, AutoModelForInstanceSegmentation),
)

__all__ = [
    "MaskFormerConfig",
    "MaskFormerForUniversalSegmentation",
    "MaskFormerImageProcessor",
    "MaskFormerPreTrainedModel",
]
