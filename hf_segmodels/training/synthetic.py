"""A small synthetic segmentation dataset (textured shapes on textured backgrounds, 4 classes) for the quickstart,
smoke tests and CPU convergence checks; no download needed."""

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from PIL import ImageDraw

CLASSES = ["background", "disc", "square", "triangle"]
PALETTE = np.array([[40, 40, 40], [230, 80, 60], [70, 200, 90], [70, 120, 230]], dtype=np.uint8)
SIZE = 64


def _texture(rng: np.random.Generator, kind: str, base: np.ndarray, size: int) -> np.ndarray:
    """A (size, size, 3) float texture: noise around `base`, with stripes or checks depending on `kind`."""
    y, x = np.mgrid[:size, :size]
    pattern = {
        "noise": np.zeros((size, size)),
        "stripes": 30.0 * np.sign(np.sin((x + y) / 2.0)),
        "checks": 30.0 * np.sign(np.sin(x / 2.5) * np.sin(y / 2.5)),
        "rings": 30.0 * np.sign(np.sin(np.hypot(x - size / 2, y - size / 2) / 2.0)),
    }[kind]
    return base[None, None, :] + pattern[..., None] + rng.normal(0, 12, (size, size, 3))


def make_example(rng: np.random.Generator, size: int = SIZE) -> tuple[PILImage.Image, PILImage.Image]:
    """One (size x size) RGB image with 1-3 shapes and its label map (mode "L", class ids 0-3). Each class has its own
    colour family and texture, the background a random colour. Shape positions and radii are drawn for a 64-pixel
    canvas and scaled to `size`, so `size=64` is the quickstart's dataset."""
    scale = size / SIZE
    background = rng.uniform(60, 200, 3)
    image = _texture(rng, "noise", background, size)
    label = PILImage.new("L", (size, size), 0)
    draw = ImageDraw.Draw(label)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 4))
        cx, cy, r = (int(round(int(v) * scale)) for v in (rng.integers(12, 52), rng.integers(12, 52), rng.integers(7, 14)))
        if cls == 1:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        elif cls == 2:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=2)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=3)
    mask = np.array(label)
    for cls, kind in ((1, "rings"), (2, "stripes"), (3, "checks")):
        colour = PALETTE[cls].astype(float) * 0.7 + rng.uniform(-25, 25, 3)
        image[mask == cls] = _texture(rng, kind, colour, size)[mask == cls]
    return PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)), label


def make_dataset(num_train: int = 600, num_validation: int = 100, seed: int = 0, size: int = SIZE) -> DatasetDict:
    """The synthetic dataset as a `DatasetDict` (train / validation) with PIL `image` and `annotation` columns."""
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "annotation": Image()})
    splits = {}
    for split, count in (("train", num_train), ("validation", num_validation)):
        images, annotations = zip(*(make_example(rng, size) for _ in range(count)))
        splits[split] = Dataset.from_dict({"image": list(images), "annotation": list(annotations)}, features=features)
    return DatasetDict(splits)


def id2label() -> dict[int, str]:
    return dict(enumerate(CLASSES))


# ---------------------------------------------------------------------------------------------------------------------
# Panoptic / instance variant
# ---------------------------------------------------------------------------------------------------------------------

PANOPTIC_CLASSES = ["wall", "ground", "disc", "square"]
PANOPTIC_STUFF = (0, 1)  # wall and ground are stuff (one segment each); discs and squares are things (instances)


def make_panoptic_example(rng: np.random.Generator, size: int = SIZE):
    """One (size x size) RGB image: a wall above a ground line (stuff, striped / checked) and 2-4 non-overlapping
    discs and squares (things, one per quadrant, each with its own colour). Returns the image, the panoptic map in
    COCO's RGB encoding (id = R + 256 G + 256^2 B, ids above 255 so that all three channels are used) and the
    segments_info list."""
    scale = size / SIZE
    horizon = int(rng.integers(20, 45) * scale)
    ids = np.zeros((size, size), dtype=np.int64)
    ids[:horizon], ids[horizon:] = 1000, 2000
    segments = [{"id": 1000, "category_id": 0, "iscrowd": 0}, {"id": 2000, "category_id": 1, "iscrowd": 0}]
    canvas = PILImage.new("I", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    quadrants = rng.permutation(4)[: int(rng.integers(2, 5))]
    for number, quadrant in enumerate(quadrants):
        cls = int(rng.integers(2, 4))
        segment_id = 70000 * (cls - 1) + 300 + number
        half = size // 2
        cx = (quadrant % 2) * half + half // 2 + int(rng.integers(-3, 4) * scale)
        cy = (quadrant // 2) * half + half // 2 + int(rng.integers(-3, 4) * scale)
        r = int(rng.integers(7, 12) * scale)
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if cls == 2 else draw.rectangle)(box, fill=segment_id)
        segments.append({"id": segment_id, "category_id": cls, "iscrowd": 0})
    things = np.asarray(canvas, dtype=np.int64)
    ids = np.where(things > 0, things, ids)
    segments = [info for info in segments if (ids == info["id"]).any()]

    image = _texture(rng, "stripes", np.array([150.0, 150.0, 110.0]) + rng.uniform(-30, 30, 3), size)
    ground = _texture(rng, "checks", np.array([90.0, 70.0, 50.0]) + rng.uniform(-20, 20, 3), size)
    image[horizon:] = ground[horizon:]
    for info in segments[2:]:
        base = PALETTE[info["category_id"] - 1 if info["category_id"] == 2 else 2].astype(float)
        kind = "rings" if info["category_id"] == 2 else "noise"
        colour = base * 0.8 + rng.uniform(-25, 25, 3)
        mask = ids == info["id"]
        image[mask] = _texture(rng, kind, colour, size)[mask]
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    return (PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)), PILImage.fromarray(rgb, mode="RGB"),
            segments)


def make_panoptic_dataset(num_train: int = 400, num_validation: int = 50, seed: int = 0, size: int = SIZE,
                          layout: str = "panoptic") -> DatasetDict:
    """The synthetic panoptic dataset (classes `PANOPTIC_CLASSES`, stuff `PANOPTIC_STUFF`) as a `DatasetDict`.

    `layout="panoptic"`: columns `image`, `annotation` (RGB-encoded panoptic PNG) and `segments_info` (list of
    `{"id", "category_id", "iscrowd"}`), as the COCO-panoptic datasets on the Hub. `layout="instance"`: `image`,
    `annotation` (a list of binary "L" masks, one per thing instance) and `classes` (one class id per mask)."""
    from datasets import List, Value

    if layout not in ("panoptic", "instance"):
        raise ValueError(f"layout must be 'panoptic' or 'instance', got {layout!r}.")
    rng = np.random.default_rng(seed)
    if layout == "panoptic":
        info = {"id": Value("int64"), "category_id": Value("int64"), "iscrowd": Value("int64")}
        features = Features({"image": Image(), "annotation": Image(), "segments_info": List(info)})
    else:
        features = Features({"image": Image(), "annotation": List(Image()), "classes": List(Value("int64"))})
    splits = {}
    for split, count in (("train", num_train), ("validation", num_validation)):
        columns = {name: [] for name in features}
        for _ in range(count):
            image, panoptic, segments = make_panoptic_example(rng, size)
            columns["image"].append(image)
            if layout == "panoptic":
                columns["annotation"].append(panoptic)
                columns["segments_info"].append(segments)
            else:
                ids = np.asarray(panoptic, dtype=np.int64)
                ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
                things = [s for s in segments if s["category_id"] not in PANOPTIC_STUFF]
                columns["annotation"].append([PILImage.fromarray((ids == s["id"]).astype(np.uint8) * 255) for s in things])
                columns["classes"].append([s["category_id"] for s in things])
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)
