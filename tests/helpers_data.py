"""Tiny datasets drawn in tests: a wsolevaluation tree of colored objects on backgrounds.

``make_wsol_tree(tmp_path, ...)`` writes ``<root>/images/<split>/<i>.png`` and
``<root>/metadata/<split>/{image_ids,class_labels,image_sizes,localization}.txt`` plus
``metadata/class_names.txt``, and returns the root.  Class ``k`` is a filled rectangle of
color ``CLASS_COLORS[k]`` placed at a random position on a noisy gray background, so
that a linear classifier on almost any features separates the classes and the object is
where its color is.  Deterministic for a given ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASS_COLORS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 40), (200, 60, 220),
                (40, 220, 220), (250, 140, 30), (120, 70, 20)]


def draw_image(rng: np.random.Generator, label: int, size: tuple[int, int],
               object_frac: tuple[float, float] = (0.3, 0.5)) -> tuple[np.ndarray, list[int]]:
    """uint8 RGB (H, W, 3) with one object of class ``label``; its x0y0x1y1 box (inclusive)."""
    width, height = size
    image = rng.normal(110, 12, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
    ow = int(width * rng.uniform(*object_frac))
    oh = int(height * rng.uniform(*object_frac))
    x0 = int(rng.integers(0, width - ow))
    y0 = int(rng.integers(0, height - oh))
    image[y0:y0 + oh, x0:x0 + ow] = CLASS_COLORS[label % len(CLASS_COLORS)]
    return image, [x0, y0, x0 + ow - 1, y0 + oh - 1]


def make_wsol_tree(tmp_path: Path, *, splits: dict[str, int] | None = None, num_classes: int = 2,
                   size: tuple[int, int] = (48, 40), seed: int = 0, masks: bool = False,
                   name: str = "data", boxes_too: bool = False) -> Path:
    """Write a tiny wsolevaluation dataset under ``tmp_path / name``; return its root.

    Args:
        splits: split name -> number of images (default ``{"train": 8, "test": 4}``);
            labels cycle through the classes.
        num_classes: classes ``class0 .. class{n-1}`` (at most len(CLASS_COLORS) distinct colors).
        size: (width, height) of every image.
        masks: write ``localization.txt`` as ``id,mask_path,ignore_path`` with a PNG mask of
            the object instead of boxes.
        boxes_too: with ``masks``, also write each object's box line (as the demo data does).
    """
    splits = splits or {"train": 8, "test": 4}
    root = Path(tmp_path) / name
    rng = np.random.default_rng(seed)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "class_names.txt").write_text(
        "".join(f"class{k}\n" for k in range(num_classes)))
    for split, count in splits.items():
        meta = root / "metadata" / split
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        ids, labels, sizes, locs = [], [], [], []
        for i in range(count):
            label = i % num_classes
            image, box = draw_image(rng, label, size)
            image_id = f"images/{split}/{i:04d}.png"
            cv2.imwrite(str(root / image_id), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            ids.append(image_id)
            labels.append(f"{image_id},{label}")
            sizes.append(f"{image_id},{size[0]},{size[1]}")
            if masks:
                mask = np.zeros((size[1], size[0]), np.uint8)
                mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = 255
                mask_id = f"masks/{split}/{i:04d}.png"
                (root / mask_id).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / mask_id), mask)
                locs.append(f"{image_id},{mask_id},")
            if not masks or boxes_too:
                locs.append(f"{image_id},{box[0]},{box[1]},{box[2]},{box[3]}")
        (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
        (meta / "class_labels.txt").write_text("\n".join(labels) + "\n")
        (meta / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
        (meta / "localization.txt").write_text("\n".join(locs) + "\n")
    return root


def save_tiny_clip(folder: Path, *, image_size: int = 64, patch_size: int = 8, layers: int = 2,
                   seed: int = 0) -> Path:
    """Save a randomly initialized tiny CLIP (and a character-level tokenizer) to ``folder``,
    loadable as ``clip:<folder>`` exactly like a hub checkpoint.  Its outputs mean nothing."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789."
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
