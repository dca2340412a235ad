"""Model cards of converted checkpoints, in three modules:

* `render`: the card of one conversion (`render_model_card`) and what cards say about each architecture, dataset
  and metric (`ARCHITECTURES`, `DATASETS`, `METRICS`);
* `zoo`: the released original checkpoints (`hf_segmodels/zoo/zoo.json`): schema (`validate_zoo`), loading, lookup
  of a checkpoint file (`find_zoo_entry`) and the cards of the releases (`render_zoo_card`);
* `validation`: checks of a rendered card (`validate_model_card`, `usage_snippet`).

`hf_segmodels.model_card` re-exports their public names.
"""
