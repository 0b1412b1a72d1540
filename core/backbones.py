"""Registry of keras.applications backbones: constructor, preprocess_input and sizes.

Kept free of TensorFlow imports so the config can validate a base name instantly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BACKBONES", "Backbone", "block_of"]


@dataclass(frozen=True)
class Backbone:
    """A keras.applications backbone Graft can graft onto: its constructor, its
    preprocess_input's module, and the input sizes it takes.
    """

    name: str
    constructor: str  # attribute of keras.applications
    preprocess_module: str  # submodule of keras.applications holding preprocess_input
    default_size: int
    min_size: int
    default_kwargs: dict[str, Any] = field(default_factory=dict)

    def blocks(self, layer_names: list[str]) -> list[str]:
        """The block of each layer, from Keras' layer naming; stem before, top after."""
        out, seen = [], False
        for name in layer_names:
            block = block_of(name)
            if block:
                seen = True
            out.append(block or ("top" if seen else "stem"))
        return out


_BLOCK_PATTERNS = [
    (re.compile(r"^(block_\d+)_"), "{}"),  # mobilenet_v2: block_13_expand
    (re.compile(r"^expanded_conv_(\d+)_"), "block_{}"),  # mobilenet_v3
    (re.compile(r"^expanded_conv_"), "block_0"),  # first inverted residual
    (re.compile(r"^conv_(?:dw|pw)_(\d+)"), "block_{}"),  # mobilenet v1
    (re.compile(r"^(block\d+)[a-z]_"), "{}"),  # efficientnet(v2): block2a_expand_conv
    (re.compile(r"^(conv\d+_block\d+)_"), "{}"),  # resnet, densenet
    (re.compile(r"^(block\d+)_"), "{}"),  # xception
    (re.compile(r"^(mixed\d+)"), "{}"),  # inception_v3
    (re.compile(r"^(convnext_tiny_stage_\d+)_block_(\d+)"), "{}_{}"),
]


def block_of(layer_name: str) -> str | None:
    """The block a layer belongs to, from Keras' layer naming (block_13_expand -> block_13).

    Used to unfreeze and report whole blocks rather than single layers.

    Args:
        layer_name: a layer's name in a keras.applications model.

    Returns:
        The block's name, or None for a layer outside the blocks (stem, top).
    """
    for pattern, fmt in _BLOCK_PATTERNS:
        m = pattern.match(layer_name)
        if m:
            return fmt.format(*m.groups())
    return None


def _b(name, ctor, mod, size, min_size=32, **kw) -> Backbone:
    return Backbone(name, ctor, mod, size, min_size, kw)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _b("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224),
        _b("mobilenet", "MobileNet", "mobilenet", 224),
        _b(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            "mobilenet_v3",
            224,
            include_preprocessing=True,
        ),
        _b(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            "mobilenet_v3",
            224,
            include_preprocessing=True,
        ),
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
