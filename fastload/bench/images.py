"""Generated ImageFolders of real photographs, for tests and the ``image`` bench scenario.

Decoders behave differently on noise and on photos (entropy, DCT statistics), so the
images are random crops, rescales and flips of the photographs bundled with
scikit-image, saved as JPEG quality 90 with sides of about 350–500 px (ImageNet-like).
"""

from __future__ import annotations

import os

import numpy as np

#: scikit-image photographs that ship inside the wheel (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")


def _photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3]))
    return photos


def make_image_folder(root: str | os.PathLike[str], images: int, classes: int = 10, seed: int = 0,
                      quality: int = 90) -> str:
    """Write ``images`` JPEGs into ``root/class_XX/`` (round-robin over classes); returns root.

    Reuses a folder that already holds exactly this many images.
    """
    from PIL import Image

    root = os.fspath(root)
    existing = sum(len(files) for _, _, files in os.walk(root)) if os.path.isdir(root) else 0
    if existing == images:
        return root
    classes = min(classes, images)  # an empty class folder is an error for ImageFolder
    rng = np.random.default_rng(seed)
    photos = _photos()
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c:02d}"), exist_ok=True)
    for i in range(images):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        crop_h, crop_w = rng.integers(int(h * 0.6), h + 1), rng.integers(int(w * 0.6), w + 1)
        top, left = rng.integers(0, h - crop_h + 1), rng.integers(0, w - crop_w + 1)
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        long_side = int(rng.integers(350, 501))
        scale = long_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(os.path.join(root, f"class_{i % classes:02d}", f"img_{i:06d}.jpg"), quality=quality)
    return root


def stock_pillow_dir() -> str | None:
    """Where the set-up put a stock Pillow for torch's baseline (``$FASTLOAD_STOCK_PILLOW``,
    default ``<venv>/stock-pillow``), if it is there."""
    import sys

    path = os.environ.get("FASTLOAD_STOCK_PILLOW", os.path.join(sys.prefix, "stock-pillow"))
    return path if os.path.isdir(os.path.join(path, "PIL")) else None


def decoder_costs(root: str, images: int, size: int) -> dict[str, float]:
    """Microseconds per image on one core: full decode per decoder, the full-decode
    pipeline (decode + RandomResizedCrop + flip) per decoder, and fastload's fused decode."""
    import time

    import torch
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    from fastload.image import ImageFolder, RandomResizedCropDecode, decoders, pillow_flavour

    folder = ImageFolder(root)
    data = [folder.read(i) for i in range(0, len(folder), max(1, len(folder) // images))][:images]
    crop = v2.RandomResizedCrop(size, antialias=True)
    fused = RandomResizedCropDecode(size)
    names = [n for n in decoders.DECODERS if decoders.available(n)]
    label = {n: (pillow_flavour() if n == "pillow" else n) for n in names}

    def pipeline(name: str, blob: bytes) -> torch.Tensor:
        image = decoders.decode(blob, name)
        params = crop.make_params([image])
        out = F.resized_crop(image, params["top"], params["left"], params["height"], params["width"],
                             [size, size], antialias=True)
        return out.flip(-1) if torch.rand(1) < 0.5 else out

    def per_image(fn) -> float:
        fn(data[0])  # warm-up: imports, first-call costs
        start = time.perf_counter()
        for blob in data:
            fn(blob)
        return (time.perf_counter() - start) / len(data) * 1e6

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a worker has
    try:
        costs = {f"decode {label[n]}": per_image(lambda b, n=n: decoders.decode(b, n)) for n in names}
        costs.update({f"pipeline {label[n]}": per_image(lambda b, n=n: pipeline(n, b)) for n in names})
        costs["fused fastload"] = per_image(fused)
    finally:
        torch.set_num_threads(threads)
    return costs


def ceiling_img_per_s(costs: dict[str, float], workers: int) -> float:
    """The best full-decode pipeline's rate on ``workers`` cores, with no loader overhead."""
    return workers * 1e6 / min(us for name, us in costs.items() if name.startswith("pipeline "))
