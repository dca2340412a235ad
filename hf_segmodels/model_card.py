"""Model cards of converted checkpoints: the public names of `hf_segmodels.cards.render` (rendering),
`hf_segmodels.cards.zoo` (the zoo of released checkpoints) and `hf_segmodels.cards.validation` (card checks), in one
namespace."""

from .cards.render import (
    ARCHITECTURES,
    DATASETS,
    DEFAULT_LIMITATIONS,
    DEFAULT_PROTOCOL,
    LIBRARY_NAME,
    METRICS,
    PACKAGE_URL,
    TEMPLATE_PATH,
    render_model_card,
)
from .cards.validation import usage_snippet, validate_model_card
from .cards.zoo import (
    MODEL_CARDS_DIR,
    ZOO_DIR,
    ZOO_PATH,
    find_zoo_entry,
    load_zoo,
    render_zoo_card,
    render_zoo_cards,
    validate_zoo,
    zoo_card_kwargs,
    zoo_card_path,
    zoo_command,
    zoo_entries,
    zoo_repo_id,
    zoo_test_protocol,
)

__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "find_zoo_entry",
    "load_zoo",
    "render_model_card",
    "render_zoo_card",
    "render_zoo_cards",
    "usage_snippet",
    "validate_model_card",
    "validate_zoo",
    "zoo_card_path",
    "zoo_command",
    "zoo_entries",
    "zoo_repo_id",
    "zoo_test_protocol",
]
