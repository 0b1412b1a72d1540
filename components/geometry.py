"""How an image of any shape becomes the square model input: `Geometry` (data.resize,
data.crop_fraction), without TensorFlow, so that a step that only names the geometry (drift
with nothing served, the CLI, the kfp launcher) does not pay TensorFlow's import. The pixels
themselves are made by components.data.decode_and_resize.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAD_RGB", "RESIZE_MODES", "SQUASH", "Geometry"]

RESIZE_MODES = ("squash", "crop", "pad")
# resize: pad fills the letterbox with the ImageNet mean colour (RGB): what the mean-subtracting
# bases' preprocessing (ResNet, DenseNet, EfficientNet, ConvNeXt) maps to 0, and MobileNet's
# x / 127.5 - 1 to within 0.2 of 0. So the bars read as the zero padding the base's own
# convolutions see at every border, not as a black (-1) frame with edges of its own.
PAD_RGB = (123.68, 116.78, 103.94)


@dataclass(frozen=True)
class Geometry:
    """How an image of any shape becomes the square model input (data.resize, crop_fraction).

    squash: the whole image resized to size x size, aspect ratio lost (Graft's first way).
    crop: the shorter side resized to size / crop_fraction, then the centre size x size: the
    transform behind ImageNet's evaluation numbers (256 -> 224). pad: the whole image, the
    longer side resized to size, centred on a PAD_RGB square (letterbox).
    """

    resize: str = "squash"
    crop_fraction: float = 0.875

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"data.resize '{self.resize}' is not one of {', '.join(RESIZE_MODES)}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"data.crop_fraction {self.crop_fraction} is not in (0, 1]")

    @classmethod
    def of(cls, data) -> Geometry:
        """The geometry a config's data section sets."""
        return cls(data.resize, data.crop_fraction)

    @property
    def key(self) -> str:
        """The geometry in a path or a cache key: the fraction matters only to crop."""
        return f"crop{self.crop_fraction:g}" if self.resize == "crop" else self.resize

    def describe(self, size: int) -> str:
        if self.resize == "crop":
            return (
                f"crop: shorter side to {round(size / self.crop_fraction)} px, the centre "
                f"{size}x{size} (crop_fraction {self.crop_fraction:g})"
            )
        if self.resize == "pad":
            return (
                f"pad: the whole image, longer side to {size} px, centred on a {size}x{size} "
                "square of the ImageNet mean colour"
            )
        return f"squash: the whole image resized to {size}x{size}, aspect ratio not kept"

    def as_dict(self, size: int) -> dict:
        """What an exported model records about its input, for readers outside TensorFlow."""
        out = {"image_size": size, "resize": self.resize, "describe": self.describe(size)}
        if self.resize == "crop":
            out["crop_fraction"] = self.crop_fraction
        if self.resize == "pad":
            out["pad_rgb"] = list(PAD_RGB)
        return out


SQUASH = Geometry()
