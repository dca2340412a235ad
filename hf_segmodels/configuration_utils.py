"""Checks shared by the four configurations."""


def check_id2label(config) -> None:
    """Raises a `ValueError` unless `config.id2label` maps exactly the class ids 0 .. num_labels - 1 (a gap would make
    a predicted id without a name, and a name without an output channel)."""
    id2label = getattr(config, "id2label", None)
    if not id2label:
        return
    try:
        ids = sorted(int(key) for key in id2label)
    except (TypeError, ValueError):
        raise ValueError(f"`id2label` keys must be integer class ids, got {sorted(map(str, id2label))[:20]}.") from None
    if ids != list(range(len(ids))):
        missing = sorted(set(range(len(ids))) - set(ids))[:20]
        raise ValueError(
            f"`id2label` must have the keys 0 .. {len(ids) - 1} (one per output channel) without gaps, got "
            f"{ids[:20]}{' ...' if len(ids) > 20 else ''}; missing {missing}."
        )


def check_choices(config, choices: dict[str, tuple]) -> None:
    """Raises a `ValueError` unless every field named in `choices` holds one of its allowed values."""
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(config, name)!r}.")


def check_vit_encoder(config) -> None:
    """Raises a `ValueError` unless the plain ViT encoder of `config` (Segmenter, SETR) is consistent: the width
    divisible by the heads, the training crop (`image_size`, int or (height, width)) a multiple of the patch size."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"`hidden_size` ({config.hidden_size}) must be divisible by `num_attention_heads` "
            f"({config.num_attention_heads})."
        )
    sizes = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    if any(size % config.patch_size for size in sizes):
        raise ValueError(f"`image_size` {config.image_size} must be a multiple of `patch_size` {config.patch_size}.")
