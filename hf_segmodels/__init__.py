"""hf_segmodels: Segmenter, SETR, SegFormer and MaskFormer as Hugging Face Transformers models.

Importing the package registers every configuration, model and image processor with transformers' Auto API, and
makes `pipeline("image-segmentation")` run the test protocol that a checkpoint records (`hf_segmodels.pipeline`).
"""

from . import metrics  # noqa: F401  (hf_segmodels.metrics.MEAN_IOU / PANOPTIC_QUALITY for evaluate.load)
from .fast_path import fastest
from .inference import infer_logits
from .segmenter import SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor
from .setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor
from .segformer import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor
from .maskformer import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from .pipeline import register_pipeline

register_pipeline()

__version__ = "0.1.0"

__all__ = [
    "fastest",
    "infer_logits",
    "SegmenterConfig",
    "SegmenterForSemanticSegmentation",
    "SegmenterImageProcessor",
    "SetrConfig",
    "SetrForSemanticSegmentation",
    "SetrImageProcessor",
    "SegformerConfig",
    "SegformerForSemanticSegmentation",
    "SegformerImageProcessor",
    "MaskFormerConfig",
    "MaskFormerForUniversalSegmentation",
    "MaskFormerImageProcessor",
]
