"""Registry of keras.applications backbones: constructor, preprocess_input and sizes.

Kept free of TensorFlow imports so the config can validate a base name instantly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications
    preprocess_module: str  # submodule of keras.applications holding preprocess_input
    default_size: int
    min_size: int
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    block_prefix: str = ""  # how layer names spell a block, for inspect-base

    def block_of(self, layer_name: str) -> str:
        """The block a layer belongs to, from Keras' naming (block_13_expand -> block_13)."""
        parts = layer_name.split("_")
        if layer_name.startswith("block_") and len(parts) > 1 and parts[1].isdigit():
            return f"block_{parts[1]}"  # mobilenet_v2
        if layer_name.startswith(("block", "conv", "stage", "expanded_conv", "mixed")):
            head = parts[0]
            return head if not (len(parts) > 1 and parts[1].isdigit()) else f"{head}_{parts[1]}"
        return parts[0]


def _b(name, ctor, mod, size, min_size=32, **kw) -> Backbone:
    return Backbone(name, ctor, mod, size, min_size, kw)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _b("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224),
        _b("mobilenet", "MobileNet", "mobilenet", 224),
        _b("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, include_preprocessing=True),
        _b("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, include_preprocessing=True),
        _b("efficientnet_b0", "EfficientNetB0", "efficientnet", 224),
        _b("efficientnet_b1", "EfficientNetB1", "efficientnet", 240),
        _b("efficientnet_b2", "EfficientNetB2", "efficientnet", 260),
        _b("efficientnet_b3", "EfficientNetB3", "efficientnet", 300),
        _b("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224),
        _b("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240),
        _b("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260),
        _b("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300),
        _b("resnet50", "ResNet50", "resnet50", 224),
        _b("resnet50_v2", "ResNet50V2", "resnet_v2", 224),
        _b("densenet121", "DenseNet121", "densenet", 224),
        _b("xception", "Xception", "xception", 299, 71),
        _b("inception_v3", "InceptionV3", "inception_v3", 299, 75),
        _b("convnext_tiny", "ConvNeXtTiny", "convnext", 224),
    ]
}
