"""Generated ImageFolders of real photographs, for tests and the ``image`` bench scenario.

Decoders behave differently on noise and on photos (entropy, DCT statistics), so the
images are random crops, rescales and flips of the photographs bundled with
scikit-image, with sides of about 350–500 px, saved as JPEG quality 90.

Those come out smoother than camera photos: 0.25 bytes per pixel, where ImageNet-1k's
training JPEGs (~138 GB for 1.28M files of typically 500×375) hold about 0.6. Entropy
decoding costs in proportion to the bytes, so a decoder's advantage shrinks on detailed
photos. With ``imagenet_like=True`` (the bench's images) each image gets what a camera
adds, sharpening and luminance grain, and is saved at quality 94 with 4:2:0 chroma
subsampling (ImageNet's usual): about 0.6 bytes per pixel, which the bench prints with
:func:`jpeg_statistics`.
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
                      quality: int = 90, imagenet_like: bool = False) -> str:
    """Write ``images`` JPEGs into ``root/class_XX/`` (round-robin over classes); returns root.
    ``imagenet_like``: as detailed as ImageNet's photos (see the module's docstring).

    Reuses a folder that already holds exactly this many images.
    """
    from PIL import Image, ImageFilter

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
        path = os.path.join(root, f"class_{i % classes:02d}", f"img_{i:06d}.jpg")
        if imagenet_like:
            image = image.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0))
            pixels = np.asarray(image, dtype=np.float32)
            grain = rng.normal(0.0, 8.0, pixels.shape[:2] + (1,)).astype(np.float32)  # the same on R, G, B: luma
            image = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
            image.save(path, quality=94, subsampling="4:2:0")
        else:
            image.save(path, quality=quality)
    return root


#: PIL's codes for a JPEG's chroma subsampling
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def jpeg_statistics(root: str, sample: int = 500) -> tuple[float, dict[str, int]]:
    """(bytes per pixel over up to ``sample`` JPEGs of an image folder, spread over it;
    how many of them use each chroma subsampling). Reads headers only."""
    from PIL import Image, JpegImagePlugin

    from fastload.image import ImageFolder

    folder = ImageFolder(root)
    paths = [path for path, _ in folder.samples[:: max(1, len(folder) // sample)]][:sample]
    size = pixels = 0
    chroma: dict[str, int] = {}
    for path in paths:
        with Image.open(path) as image:
            if image.format != "JPEG":
                continue
            size += os.path.getsize(path)
            pixels += image.width * image.height
            kind = SUBSAMPLING.get(JpegImagePlugin.get_sampling(image), "other")
            chroma[kind] = chroma.get(kind, 0) + 1
    return (size / pixels if pixels else 0.0), chroma


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
