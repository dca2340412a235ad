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
