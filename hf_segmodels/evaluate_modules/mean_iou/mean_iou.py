"""Mean IoU as an `evaluate` module shipped inside hf_segmodels, loadable with the Hub unreachable:

    import evaluate, hf_segmodels
    metric = evaluate.load(hf_segmodels.metrics.MEAN_IOU)
    metric.compute(predictions=maps, references=labels, num_labels=150, ignore_index=255, reduce_labels=False)

Arguments and result keys are those of the Hub's `mean_iou` module (predictions / references as lists of (H, W) class
maps, `num_labels`, `ignore_index`, `nan_to_num`, `label_map`, `reduce_labels`; `mean_iou`, `mean_accuracy`,
`overall_accuracy`, `per_category_iou`, `per_category_accuracy`), and so are the numbers; the counting runs in
`hf_segmodels.metrics.SegmentationMetric` (one vectorised confusion matrix). Inputs may be NumPy arrays, torch tensors
or nested lists; results are NumPy floats and arrays, as the Hub module returns.
"""

import datasets
import evaluate
import numpy as np
import torch

from hf_segmodels.metrics import SegmentationMetric, as_numpy

_DESCRIPTION = """Intersection over union per class and its mean over the classes present (mIoU), per-class and mean
pixel accuracy, and overall pixel accuracy, for semantic segmentation maps."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of (H, W) arrays or tensors): predicted class ids.
    references (`list` of (H, W) arrays or tensors): ground-truth class ids.
    num_labels (`int`): number of classes.
    ignore_index (`int`): label ignored in the computation (e.g. 255).
    nan_to_num (`float`, *optional*): replaces NaN (classes with an empty union) in the results.
    label_map (`dict[int, int]`, *optional*): old label id -> new label id, applied to the references first.
    reduce_labels (`bool`, defaults to `False`): 0 -> ignored and every other label minus one (ADE20K).
Returns:
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`, `per_category_accuracy`
    ((num_labels,) arrays; NaN for classes that occur in neither map).
"""

_CITATION = """@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
author = {{MMSegmentation Contributors}},
license = {Apache-2.0},
title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
url = {https://github.com/open-mmlab/mmsegmentation},
year = {2020}
}"""


def _as_arrays(values) -> list[np.ndarray] | None:
    return None if values is None else [as_numpy(value) for value in values]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=["https://github.com/open-mmlab/mmsegmentation"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Adds a batch of (H, W) prediction / reference maps (NumPy arrays, torch tensors or nested lists)."""
        return super().add_batch(predictions=_as_arrays(predictions), references=_as_arrays(references), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Adds one (H, W) prediction / reference map."""
        prediction = None if prediction is None else as_numpy(prediction)
        reference = None if reference is None else as_numpy(reference)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Mean IoU of everything added (and of `predictions` / `references`, if given)."""
        return super().compute(predictions=_as_arrays(predictions), references=_as_arrays(references), **kwargs)

    def _compute(self, predictions, references, num_labels: int, ignore_index: int, nan_to_num=None,
                 label_map=None, reduce_labels: bool = False):
        metric = SegmentationMetric(num_labels=num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels)
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction, reference = np.asarray(prediction), np.asarray(reference).copy()
            if prediction.shape != reference.shape:
                raise ValueError(
                    f"Prediction {index} has shape {prediction.shape} but its reference {reference.shape}."
                )
            if label_map is not None:
                # one mapping after the other, as the Hub module applies them ({1: 2, 2: 1} maps 1 and 2 to 1)
                for old_id, new_id in label_map.items():
                    reference[reference == int(old_id)] = new_id
            metric.update(torch.from_numpy(prediction), torch.from_numpy(reference))
        with np.errstate(invalid="ignore"):
            results = metric.compute()
        output = {
            "mean_iou": np.float64(results["mean_iou"]),
            "mean_accuracy": np.float64(results["mean_accuracy"]),
            "overall_accuracy": np.float64(results["overall_accuracy"]),
            "per_category_iou": np.asarray(results["per_category_iou"], dtype=np.float64),
            "per_category_accuracy": np.asarray(results["per_category_accuracy"], dtype=np.float64),
        }
        if nan_to_num is not None:
            output = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in output.items()}
        return output
