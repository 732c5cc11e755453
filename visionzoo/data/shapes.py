"""Generated dense-prediction data: images of drawn shapes in COCO instance and ADE20K layouts.

Real detection/segmentation pipelines (mmdet, mmseg) run end to end on these in the tests, with
no download: each image holds a few filled rectangles, ellipses and triangles on a textured
background, and the annotations (boxes, polygon masks, label maps) are exact by construction.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")


@dataclass
class Shape:
    category: int  # index into SHAPE_CLASSES
    polygon: list[tuple[float, float]]


def _random_shape(rng: np.random.Generator, size: int) -> Shape:
    category = int(rng.integers(len(SHAPE_CLASSES)))
    extent = rng.uniform(0.15, 0.4) * size
    cx, cy = rng.uniform(extent / 2, size - extent / 2, size=2)
    half = extent / 2
    if category == 0:
        polygon = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    elif category == 1:
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        polygon = [(cx + half * math.cos(a), cy + 0.7 * half * math.sin(a)) for a in angles]
    else:
        polygon = [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return Shape(category, polygon)


def _draw_scene(rng: np.random.Generator, size: int, max_shapes: int) -> tuple[Image.Image, list[Shape]]:
    background = rng.integers(40, 90, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    shapes = [_random_shape(rng, size) for _ in range(int(rng.integers(1, max_shapes + 1)))]
    for shape in shapes:
        # One colour channel per class keeps the task learnable; brightness varies per instance.
        colour = [0, 0, 0]
        colour[shape.category] = int(rng.integers(170, 255))
        draw.polygon(shape.polygon, fill=tuple(colour))
    return image, shapes


def _instance_mask(shape: Shape, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(shape.polygon, fill=1)
    return np.asarray(mask, dtype=bool)


def write_coco_shapes(root: str | Path, num_train: int = 8, num_val: int = 4, size: int = 128, seed: int = 0) -> Path:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json`` (COCO format).

    Later shapes occlude earlier ones; each instance's polygon is kept as drawn, and its box and area
    come from the visible mask, so occluded instances are annotated by what is visible.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(SHAPE_CLASSES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    annotation_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, shapes = _draw_scene(rng, size, max_shapes=3)
            file_name = f"{split}_{index:04d}.jpg"
            image.save(root / split / file_name, quality=95)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            occupied = np.zeros((size, size), dtype=bool)
            for shape in reversed(shapes):
                visible = _instance_mask(shape, size) & ~occupied
                occupied |= visible
                if visible.sum() < 16:
                    continue
                ys, xs = np.nonzero(visible)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                annotations.append({
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": shape.category + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(visible.sum()),
                    "segmentation": [[coord for point in shape.polygon for coord in point]],
                    "iscrowd": 0,
                })
                annotation_id += 1
        payload = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    return root


def write_ade_shapes(root: str | Path, num_train: int = 8, num_val: int = 4, size: int = 128, seed: int = 0) -> Path:
    """Write the ADE20K layout: ``root/images/{training,validation}/*.jpg`` and label maps
    ``root/annotations/{training,validation}/*.png`` with 0 = unlabeled and class ``k`` stored as ``k + 1``
    (what mmseg's ``reduce_zero_label=True`` expects); shapes use ADE20K classes 1..3.
    """
    root = Path(root)
    rng = np.random.default_rng(seed + 1)
    for split, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, shapes = _draw_scene(rng, size, max_shapes=3)
            labels = np.zeros((size, size), dtype=np.uint8)
            labels[:] = 1  # background is ADE20K class 0 ("wall"), stored as 1
            for shape in shapes:
                labels[_instance_mask(shape, size)] = shape.category + 2
            name = f"ADE_{split}_{index:08d}"
            image.save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(labels).save(root / "annotations" / split / f"{name}.png")
    return root
