from .configuration_setr import SetrConfig
from .image_processing_setr import SetrImageProcessor
from .modeling_setr import SetrForSemanticSegmentation, SetrPreTrainedModel
from .._auto import register_architecture

register_architecture(SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor)

__all__ = ["SetrConfig", "SetrForSemanticSegmentation", "SetrImageProcessor", "SetrPreTrainedModel"]
