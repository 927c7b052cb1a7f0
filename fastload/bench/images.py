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
