from .configuration_segmenter import SegmenterConfig
from .image_processing_segmenter import SegmenterImageProcessor
from .modeling_segmenter import SegmenterForSemanticSegmentation, SegmenterPreTrainedModel
from .._auto import register_architecture

register_architecture(SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor)

__all__ = ["SegmenterConfig", "SegmenterForSemanticSegmentation", "SegmenterImageProcessor", "SegmenterPreTrainedModel"]
