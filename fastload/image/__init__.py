"""Image datasets and decoding: fused decode + crop, decoder backends with one fallback rule."""

from .decoders import ImageDecodeError, decode, pillow_flavour
from .folder import ImageFolder
from .transforms import RandomResizedCropDecode, ResizeCenterCropDecode

__all__ = [
    "ImageDecodeError",
    "ImageFolder",
    "RandomResizedCropDecode",
    "ResizeCenterCropDecode",
    "decode",
    "pillow_flavour",
]
