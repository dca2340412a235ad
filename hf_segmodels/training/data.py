"""Datasets for training and evaluation: loading (Hub id, `save_to_disk` folder, imagefolder / parquet / arrow),
column and label checks, the decoding transform (`datasets.set_transform`, nothing materialised twice), the
augmented training samples and the evaluation samples."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk

from ..image_processing import _to_channels_last_rgb, crop_to_pixel_mask
from .augmentation import TrainAugmentation

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


IMAGE_FOLDER_NAMES = ("images", "image", "img", "imgs")
MASK_FOLDER_NAMES = ("masks", "mask", "annotations", "labels", "label")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _paired_folders(folder: Path) -> tuple[Path, Path] | None:
    """(images folder, masks folder) when `folder` holds one of each (e.g. `images/` and `masks/`)."""
    images = [folder / name for name in IMAGE_FOLDER_NAMES if (folder / name).is_dir()]
    masks = [folder / name for name in MASK_FOLDER_NAMES if (folder / name).is_dir()]
    return (images[0], masks[0]) if images and masks else None


def _paired_split(images: Path, masks: Path) -> Dataset:
    """Images and PNG masks matched by file name without suffix (`images/x.jpg` <-> `masks/x.png`), in sorted order,
    as a dataset with `image` and `annotation` columns (decoded lazily from the files)."""
    from datasets import Features
    from datasets import Image as ImageFeature

    def files(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
                key = path.relative_to(folder).with_suffix("").as_posix()
                if key in found:
                    raise ValueError(f"{str(folder)!r} has two files for {key!r}: {found[key].name} and {path.name}.")
                found[key] = path
        return found

    image_files, mask_files = files(images), files(masks)
    without_mask = sorted(set(image_files) - set(mask_files))
    without_image = sorted(set(mask_files) - set(image_files))
    if without_mask or without_image:
        problems = []
        if without_mask:
            problems.append(f"{len(without_mask)} image(s) in {str(images)!r} without a mask: {without_mask[:5]}")
        if without_image:
            problems.append(f"{len(without_image)} mask(s) in {str(masks)!r} without an image: {without_image[:5]}")
        raise ValueError("Images and masks are matched by file name (images/x.jpg <-> masks/x.png); " +
                         "; ".join(problems) + ".")
    if not image_files:
        raise ValueError(f"No images (.jpg, .png, ...) in {str(images)!r}.")
    names = sorted(image_files)
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    return Dataset.from_dict(
        {"image": [str(image_files[n]) for n in names], "annotation": [str(mask_files[n]) for n in names]},
        features=features,
    )


def load_image_mask_folders(path: Path) -> DatasetDict | None:
    """The "folder of images + folder of masks" layout: `path/images` + `path/masks` (one `train` split), or
    `path/<split>/images` + `path/<split>/masks` for each split folder (`train/`, `validation/`, ...). None if `path`
    has neither layout."""
    pair = _paired_folders(path)
    if pair is not None:
        return DatasetDict({"train": _paired_split(*pair)})
    splits = {}
    for child in sorted(path.iterdir()):
        if child.is_dir() and (pair := _paired_folders(child)) is not None:
            splits[child.name] = _paired_split(*pair)
    return DatasetDict(splits) if splits else None


def load_splits(dataset_name: str, dataset_config_name: str | None = None) -> DatasetDict:
    """Every split of `dataset_name`: a folder written by `save_to_disk`, a folder of images and a folder of masks
    with matching file names (`images/` + `masks/`, optionally inside `train/`, `validation/`, ...), a local data
    folder or file for `datasets.load_dataset` (imagefolder, parquet, arrow), or a Hub dataset id."""
    path = Path(dataset_name)
    paired = load_image_mask_folders(path) if path.is_dir() else None
    if paired is not None:
        return paired
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        # `datasets` cannot load a saved split with 0 examples (it fails with an IndexError): name it instead.
        empty = [
            state.parent.name for state in sorted([path / "state.json", *path.glob("*/state.json")])
            if state.is_file() and not json.loads(state.read_text()).get("_data_files")
        ]
        if empty:
            raise ValueError(f"The dataset at {str(path)!r} has empty split(s) {empty} (0 examples).")
        loaded = load_from_disk(str(path))
    elif path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"Cannot load {str(path)!r}: use a .parquet / .arrow file or a dataset folder.")
        loaded = _load_dataset(builder, data_files=str(path))
    else:
        loaded = _load_dataset(dataset_name, dataset_config_name)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    return loaded


def _load_dataset(*args, **kwargs):
    try:
        return load_dataset(*args, **kwargs)
    except ValueError as error:
        if "corresponds to no data" in str(error):
            source = kwargs.get("data_files") or args[0]
            raise ValueError(f"The dataset {str(source)!r} has an empty split (0 examples): {error}") from None
        raise


def get_split(splits: DatasetDict, split: str, columns: tuple[str, ...]) -> Dataset:
    """The split `split`, checked to exist, to be non-empty and to hold `columns`."""
    if split not in splits:
        raise ValueError(f"The dataset has no split {split!r}; available splits: {sorted(splits)}.")
    dataset = splits[split]
    if len(dataset) == 0:
        raise ValueError(f"The {split!r} split of the dataset is empty (0 examples).")
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {split!r} split has no column(s) {missing}; available columns: {dataset.column_names}. Name the "
            "image and label columns with --image_column / --label_column."
        )
    return dataset


def resolve_id2label(id2label: str | None, dataset_name: str | None, fallback: dict | None = None) -> dict[int, str]:
    """Class names from `--id2label` (a JSON file or a JSON string), else `id2label.json` beside a local dataset or
    in its Hub repository, else `fallback` (e.g. the pretrained model's config)."""
    mapping = None
    if id2label is not None:
        text = Path(id2label).read_text() if Path(id2label).is_file() else id2label
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--id2label must be a JSON file or JSON object text: {error}") from None
    elif dataset_name is not None and (Path(dataset_name) / "id2label.json").is_file():
        mapping = json.loads((Path(dataset_name) / "id2label.json").read_text())
    elif dataset_name is not None and not Path(dataset_name).exists() and fallback is None:
        from huggingface_hub import hf_hub_download

        try:
            mapping = json.loads(Path(hf_hub_download(dataset_name, "id2label.json", repo_type="dataset")).read_text())
        except Exception as error:  # noqa: BLE001 - any download failure means "not available"
            raise ValueError(
                f"No class names: pass --id2label (JSON) since {dataset_name!r} has no id2label.json ({error})."
            ) from None
    elif fallback is not None:
        mapping = fallback
    if mapping is None:
        raise ValueError("No class names: pass --id2label (a JSON file or text such as '{\"0\": \"road\", ...}').")
    if isinstance(mapping, list):
        mapping = dict(enumerate(mapping))
    result = {int(key): str(value) for key, value in mapping.items()}
    if sorted(result) != list(range(len(result))):
        raise ValueError(f"id2label keys must be 0 .. {len(result) - 1} without gaps, got {sorted(result)[:20]}.")
    return result


def decode_image(image) -> np.ndarray:
    """A dataset image (PIL of any mode, or an array) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, PIL.Image.Image) and image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.asarray(image.convert("RGB"))
    array = _to_channels_last_rgb(image)
    if isinstance(array, PIL.Image.Image):
        array = np.asarray(array.convert("RGB"))
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def decode_label(label) -> np.ndarray:
    """A dataset label map (single-channel PIL image or 2-D array of class ids) -> (H, W) int64."""
    if isinstance(label, PIL.Image.Image):
        if label.mode in ("RGB", "RGBA", "LA"):
            raise ValueError(
                f"Label maps must be single-channel images of class ids, got a PIL image of mode {label.mode!r}."
            )
        label = np.asarray(label)
    array = np.asarray(label)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.squeeze(0 if array.shape[0] == 1 else -1)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise ValueError(f"Label maps must be (H, W) integer class ids, got shape {array.shape} dtype {array.dtype}.")
    return array.astype(np.int64)


def reduce_labels(label: np.ndarray) -> np.ndarray:
    """ADE20K convention: 0 (other) -> 255 (ignored), k -> k - 1, 255 stays 255."""
    reduced = label - 1
    reduced[(label == 0) | (label == 255)] = 255
    return reduced


def check_label_values(label: np.ndarray, num_labels: int, index: int, split: str, ignore_index: int = 255) -> None:
    invalid = ((label < 0) | (label >= num_labels)) & (label != ignore_index)
    if invalid.any():
        values = np.unique(label[invalid]).tolist()
        hint = ""
        if 0 in np.unique(label) and max(values) == num_labels:
            hint = " (0 looks like an 'unlabelled' class: try --do_reduce_labels)"
        raise ValueError(
            f"Example {index} of the {split!r} split has label values {values[:20]} outside [0, {num_labels}) "
            f"(num_labels={num_labels} from id2label; {ignore_index} = ignore){hint}."
        )


def checked_pair(image: np.ndarray, label: np.ndarray, index: int, split: str, num_labels: int,
                 do_reduce_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """A decoded example with its label map reduced (if asked) and checked: same size as the image, class ids in
    range; errors name the example and the split."""
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"Example {index} of the {split!r} split: image size {image.shape[:2]} differs from its label map size "
            f"{label.shape}."
        )
    if do_reduce_labels:
        label = reduce_labels(label)
    check_label_values(label, num_labels, index, split)
    return image, label


class SegmentationSamples(torch.utils.data.Dataset):
    """Decoded (image, label) pairs of one split, as NumPy arrays, with label checks.

    Decoding runs as a `datasets` on-access transform (`with_transform`, i.e. `set_transform` on a copy, so the
    caller's dataset keeps its format) on the image and label columns only (other columns are never read); labels are reduced (`do_reduce_labels`) and checked against `num_labels`, naming the example index.
    """

    def __init__(self, dataset: Dataset, image_column: str, label_column: str, num_labels: int,
                 do_reduce_labels: bool, split: str):
        self.image_column, self.label_column = image_column, label_column
        self.num_labels, self.do_reduce_labels, self.split = num_labels, do_reduce_labels, split

        def decode(batch):
            return {
                "image": [decode_image(image) for image in batch[image_column]],
                "label": [decode_label(label) for label in batch[label_column]],
            }

        self.dataset = dataset.with_transform(decode, columns=[image_column, label_column])

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        example = self.dataset[int(index)]
        return checked_pair(example["image"], example["label"], index, self.split, self.num_labels,
                            self.do_reduce_labels)


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, index)` pairs: a permutation of the dataset that depends only on (seed, epoch), so that every
    process draws the same order (accelerate shards its batches) and a resumed run replays the same order. The epoch
    travels with the index so that augmentation can be seeded per (seed, epoch, index) in any worker."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        epoch = self.epoch
        return iter([(epoch, index) for index in order])

    def __len__(self) -> int:
        return self.size


class TrainSamples(torch.utils.data.Dataset):
    """Augmented training samples: `__getitem__((epoch, index))` -> {"pixel_values" (3, h, w), "labels" (h, w)}."""

    def __init__(self, samples: SegmentationSamples, augmentation: TrainAugmentation, seed: int):
        self.samples, self.augmentation, self.seed = samples, augmentation, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        image, label = self.samples.sample(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        pixel_values, labels = self.augmentation(image, label, rng)
        return {"pixel_values": torch.from_numpy(pixel_values), "labels": torch.from_numpy(labels)}


class EvalSamples(torch.utils.data.Dataset):
    """Evaluation samples: the image processed by the model's image processor (test-time resize and normalisation)
    and the label map at its ORIGINAL resolution, as the papers evaluate (predictions are resized back)."""

    def __init__(self, samples: SegmentationSamples, image_processor):
        self.samples, self.image_processor = samples, image_processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return eval_sample(self.image_processor, *self.samples.sample(index))


def eval_sample(image_processor, image: np.ndarray, label: np.ndarray) -> dict:
    """{"pixel_values" (3, h, w) processed, "labels" (H, W) at the original resolution} of one evaluation example."""
    encoded = image_processor(image, return_tensors="pt")
    pixel_values = encoded["pixel_values"][0]
    if "pixel_mask" in encoded:  # a padding processor (MaskFormer): the inference path pads the image itself
        pixel_values = crop_to_pixel_mask(pixel_values, encoded["pixel_mask"][0])
    return {"pixel_values": pixel_values, "labels": torch.from_numpy(label)}


def collate_train(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }


def collate_eval(examples: list[dict]) -> dict:
    """Evaluation images may differ in size: the batch keeps lists, and the evaluation loop stacks equal sizes."""
    return {
        "pixel_values": [example["pixel_values"] for example in examples],
        "labels": [example["labels"] for example in examples],
    }


def dataloader_generator(seed: int) -> torch.Generator:
    """A private generator for DataLoaders, so that iterating them never draws from the global torch RNG (which
    would shift dropout masks between an uninterrupted and a resumed run)."""
    return torch.Generator().manual_seed(seed)



# ---------------------------------------------------------------------------------------------------------------------
# Streaming (`--streaming`): data read as it is trained on, never stored whole
# ---------------------------------------------------------------------------------------------------------------------


def load_streaming_splits(dataset_name: str, dataset_config_name: str | None = None) -> IterableDatasetDict:
    """Every split of `dataset_name` as an `IterableDataset`: a Hub id or local data files are streamed
    (`load_dataset(..., streaming=True)`); a `save_to_disk` or images + masks folder is read in order from disk."""
    path = Path(dataset_name)
    if path.is_dir() and (load_image_mask_folders(path) is not None or (path / "dataset_dict.json").is_file()
                          or (path / "state.json").is_file()):
        return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in
                                    load_splits(dataset_name, dataset_config_name).items()})
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"Cannot stream {str(path)!r}: use a .parquet / .arrow file or a dataset folder.")
        loaded = load_dataset(builder, data_files=str(path), streaming=True)
    else:
        loaded = load_dataset(dataset_name, dataset_config_name, streaming=True)
    if isinstance(loaded, IterableDataset):
        loaded = IterableDatasetDict({"train": loaded})
    return loaded


def get_streaming_split(splits: IterableDatasetDict, split: str, columns: tuple[str, ...]) -> IterableDataset:
    """The streamed split `split`, checked to exist and (from its features, when known) to hold `columns`."""
    if split not in splits:
        raise ValueError(f"The dataset has no split {split!r}; available splits: {sorted(splits)}.")
    dataset = splits[split]
    names = list(dataset.features) if dataset.features is not None else None
    missing = [column for column in columns if names is not None and column not in names]
    if missing:
        raise ValueError(
            f"The {split!r} split has no column(s) {missing}; available columns: {names}. Name the image and label "
            "columns with --image_column / --label_column."
        )
    return dataset


class StreamingSamples:
    """Decoded and checked (image, label) pairs of a streamed split, in stream order: `(position, image, label)`."""

    def __init__(self, dataset: IterableDataset, image_column: str, label_column: str, num_labels: int,
                 do_reduce_labels: bool, split: str):
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.num_labels, self.do_reduce_labels, self.split = num_labels, do_reduce_labels, split

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        for position, example in enumerate(self.dataset):
            if self.image_column not in example or self.label_column not in example:
                raise ValueError(
                    f"Example {position} of the streamed {self.split!r} split has no {self.image_column!r} / "
                    f"{self.label_column!r} column; it has {sorted(example)}."
                )
            image, label = decode_image(example[self.image_column]), decode_label(example[self.label_column])
            yield (position, *checked_pair(image, label, position, self.split, self.num_labels,
                                           self.do_reduce_labels))

    def check_first(self, count: int = 2) -> None:
        """Reads and checks the first `count` examples (fails fast on a malformed stream)."""
        for index, _ in enumerate(self):
            if index + 1 >= count:
                break


class StreamingTrainSamples(torch.utils.data.IterableDataset):
    """Augmented training samples from a stream, shuffled with a buffer whose seed changes with the epoch
    (`datasets.IterableDataset.set_epoch`); each sample's augmentation is seeded by (seed, epoch, position in the
    epoch), so an epoch replays identically and a resumed run that skips the batches already trained on sees the
    same samples as an uninterrupted one."""

    def __init__(self, samples: StreamingSamples, augmentation: TrainAugmentation, seed: int):
        self.samples, self.augmentation, self.seed = samples, augmentation, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.samples.set_epoch(epoch)

    def __iter__(self):
        for position, image, label in self.samples:
            rng = np.random.default_rng([self.seed, self.epoch, position])
            pixel_values, labels = self.augmentation(image, label, rng)
            yield {"pixel_values": torch.from_numpy(pixel_values), "labels": torch.from_numpy(labels)}


class StreamingEvalSamples(torch.utils.data.IterableDataset):
    """Evaluation samples from a stream: processed image and the label map at its original resolution."""

    def __init__(self, samples: StreamingSamples, image_processor):
        self.samples, self.image_processor = samples, image_processor

    def __iter__(self):
        for _, image, label in self.samples:
            yield eval_sample(self.image_processor, image, label)
