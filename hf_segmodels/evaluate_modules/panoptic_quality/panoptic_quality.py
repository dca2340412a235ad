"""Panoptic quality (PQ, SQ, RQ; Kirillov et al., CVPR 2019) as an `evaluate` module shipped inside hf_segmodels,
loadable with the Hub unreachable:

    import evaluate, hf_segmodels
    metric = evaluate.load(hf_segmodels.metrics.PANOPTIC_QUALITY)
    result = processor.post_process_panoptic_segmentation(outputs, target_sizes=[size])[0]
    metric.add(prediction=result["segmentation"], prediction_segments_info=result["segments_info"],
               reference=panoptic_ids, reference_segments_info=coco_segments_info)
    metric.compute(num_labels=133, thing_ids=[...])

Maps hold segment ids (0 = void); `segments_info` entries need `id` and `label_id` (or COCO's `category_id`) and may
have `iscrowd`. The matching rules are the COCO `panopticapi`'s (`hf_segmodels.metrics.PanopticQualityMetric`).
Results are plain Python floats and dicts.
"""

import datasets
import evaluate
import numpy as np
import torch

from hf_segmodels.metrics import PanopticQualityMetric, as_numpy

_DESCRIPTION = """Panoptic quality PQ = SQ x RQ, averaged over the classes that occur, with the matching rules of the
COCO panopticapi (IoU > 0.5 matches; void and crowd regions ignored)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions / references (`list` of (H, W) arrays or tensors): segment-id maps (0 = void).
    prediction_segments_info / reference_segments_info (`list` of `list[dict]`): per image, the segments with `id`,
        `label_id` (or `category_id`) and optionally `iscrowd`.
    num_labels (`int`): number of classes.
    thing_ids (`list[int]`, *optional*): the "thing" classes, for `things` / `stuff` summaries.
Returns:
    `pq`, `sq`, `rq` (floats, NaN with a `warning` when nothing can be measured), `num_classes`, `per_class`
    ({class id: {pq, sq, rq}}) and, with `thing_ids`, `things` / `stuff`.
"""

_CITATION = """@inproceedings{kirillov2019panoptic,
  title={Panoptic Segmentation},
  author={Kirillov, Alexander and He, Kaiming and Girshick, Ross and Rother, Carsten and Doll{\\'a}r, Piotr},
  booktitle={CVPR},
  year={2019}
}"""

_SEGMENT = {"id": datasets.Value("int64"), "label_id": datasets.Value("int64"), "iscrowd": datasets.Value("int64")}


def _segments(segments_info) -> list[dict]:
    """Keeps the fields the metric reads (post-processing adds `score` / `was_fused`, COCO `bbox` / `area`)."""
    segments = []
    for info in segments_info:
        label = info.get("label_id", info.get("category_id"))
        if label is None or "id" not in info:
            raise ValueError(f"A segment {info!r} needs 'id' and 'label_id' (or 'category_id').")
        segments.append({"id": int(info["id"]), "label_id": int(label), "iscrowd": int(bool(info.get("iscrowd", 0)))})
    return segments


class PanopticQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "prediction_segments_info": [_SEGMENT],
                    "reference_segments_info": [_SEGMENT],
                }
            ),
            reference_urls=["https://github.com/cocodataset/panopticapi"],
        )

    @staticmethod
    def _batch(predictions, references, prediction_segments_info, reference_segments_info) -> dict:
        return {
            "predictions": None if predictions is None else [as_numpy(p) for p in predictions],
            "references": None if references is None else [as_numpy(r) for r in references],
            "prediction_segments_info": None if prediction_segments_info is None
            else [_segments(s) for s in prediction_segments_info],
            "reference_segments_info": None if reference_segments_info is None
            else [_segments(s) for s in reference_segments_info],
        }

    def add_batch(self, *, predictions=None, references=None, prediction_segments_info=None,
                  reference_segments_info=None, **kwargs):
        """Adds a batch of segment-id maps with their segments_info lists."""
        batch = self._batch(predictions, references, prediction_segments_info, reference_segments_info)
        return super().add_batch(**batch, **kwargs)

    def add(self, *, prediction=None, reference=None, prediction_segments_info=None, reference_segments_info=None,
            **kwargs):
        """Adds one image: its segment-id maps and their segments_info lists."""
        return super().add(
            prediction=None if prediction is None else as_numpy(prediction),
            reference=None if reference is None else as_numpy(reference),
            prediction_segments_info=None if prediction_segments_info is None
            else _segments(prediction_segments_info),
            reference_segments_info=None if reference_segments_info is None else _segments(reference_segments_info),
            **kwargs,
        )

    def compute(self, *, predictions=None, references=None, prediction_segments_info=None,
                reference_segments_info=None, **kwargs):
        """PQ / SQ / RQ of everything added (and of the given batch, if any)."""
        if predictions is None and references is None:
            return super().compute(**kwargs)
        batch = self._batch(predictions, references, prediction_segments_info, reference_segments_info)
        return super().compute(**batch, **kwargs)

    def _compute(self, predictions, references, prediction_segments_info, reference_segments_info, num_labels: int,
                 thing_ids=None):
        metric = PanopticQualityMetric(num_labels=num_labels, thing_ids=thing_ids)
        for prediction, reference, predicted, truth in zip(predictions, references, prediction_segments_info,
                                                           reference_segments_info):
            metric.update(torch.as_tensor(np.asarray(prediction)), predicted, torch.as_tensor(np.asarray(reference)),
                          truth)
        return metric.compute()
