"""Registration of our classes with transformers' Auto API."""

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, PreTrainedConfig, PreTrainedModel
from transformers.models.auto import modeling_auto
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING


def _announce_to_pipelines(auto_class, model_type: str, model_class: type) -> None:
    """`pipeline("image-segmentation")` checks models against transformers' static class-name tables, which
    `register` does not touch, and logs "not supported" for registered models; add ours to those tables. Our model
    types are not in `CONFIG_MAPPING_NAMES`, so the lazy Auto mappings never try to import them from there."""
    names = {
        "AutoModelForSemanticSegmentation": modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
        "AutoModelForUniversalSegmentation": modeling_auto.MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
        "AutoModelForInstanceSegmentation": modeling_auto.MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES,
    }.get(auto_class.__name__)
    if names is not None:
        names.setdefault(model_type, model_class.__name__)


def _legacy_name_class(image_processor_class: type, legacy_name: str) -> type:
    """A subclass named `legacy_name`, the class name that folders saved before the rename carry in
    "image_processor_type". transformers resolves that name through the registered classes first, finds this one in
    our mapping and then loads the mapping's "pil" entry, our current class (it never instantiates this alias; an
    instance would still save under the current name, see `RemoteCodeImageProcessorMixin.to_dict`)."""
    return type(
        legacy_name,
        (image_processor_class,),
        {"__module__": image_processor_class.__module__, "_legacy_name_of": image_processor_class,
         "__doc__": f"Former name of `{image_processor_class.__name__}`; loads folders saved with that name."},
    )  # fmt: skip


def register_architecture(
    config_class: type[PreTrainedConfig],
    model_class: type[PreTrainedModel],
    image_processor_class: type,
    *,
    base_model_class: type[PreTrainedModel] | None = None,
    extra_auto_classes: tuple = (),
) -> None:
    """Registers one architecture with `AutoConfig`, `AutoImageProcessor`, `AutoModelForSemanticSegmentation`
    (plus `AutoModel` for `base_model_class` and every class in `extra_auto_classes`), and marks the classes with
    `register_for_auto_class` so that `save_pretrained` writes an `auto_map` for `trust_remote_code` users.

    `exist_ok=True` keeps a re-import (e.g. `importlib.reload`) harmless.
    """
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    # Registered on the mapping directly: `AutoImageProcessor.register` would merge in the processors that
    # transformers maps to a config class of the same *name* (our SegformerConfig / MaskFormerConfig), so that a
    # machine with torchvision would silently get transformers' processor instead of ours.
    processors = {"pil": image_processor_class}
    legacy_name = image_processor_class.__name__.removeprefix("Segmodels")
    if legacy_name != image_processor_class.__name__:
        processors["legacy_name"] = _legacy_name_class(image_processor_class, legacy_name)
    IMAGE_PROCESSOR_MAPPING.register(config_class, processors, exist_ok=True)
    # Declares "no video processor". Without it, `pipeline(...)` looks for one, derives a remote-code class name
    # from our processor's `auto_map` and interactively asks whether to trust that (non-existent) custom code.
    VIDEO_PROCESSOR_MAPPING.register(config_class, {}, exist_ok=True)
    for auto_class in (AutoModelForSemanticSegmentation, *extra_auto_classes):
        auto_class.register(config_class, model_class, exist_ok=True)
        _announce_to_pipelines(auto_class, config_class.model_type, model_class)
    if base_model_class is not None:
        AutoModel.register(config_class, base_model_class, exist_ok=True)
        base_model_class.register_for_auto_class("AutoModel")

    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModelForSemanticSegmentation")
    image_processor_class.register_for_auto_class("AutoImageProcessor")
