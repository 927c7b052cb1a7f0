"""Image datasets and decoding: fused decode + crop, decoder backends with one fallback rule."""

from .decoders import ImageDecodeError, decode, pillow_flavour
from .folder import ImageFolder
from .dali import DaliImageLoader
from .transforms import EncodedCrop, RandomResizedCropDecode, ResizeCenterCropDecode

__all__ = [
    "DaliImageLoader",
    "EncodedCrop",
    "ImageDecodeError",
    "ImageFolder",
    "RandomResizedCropDecode",
    "ResizeCenterCropDecode",
    "decode",
    "pillow_flavour",
]
