"""TF Serving's generated protos without importing TensorFlow.

tensorflow_serving.apis' modules import tensorflow.core.framework.*_pb2, and importing any
tensorflow.* module first runs tensorflow/__init__.py: all of TensorFlow, seconds of start-up
and C++ log noise for a client that only sends bytes. The _pb2 files themselves are plain
protobuf code. So, when TensorFlow is not loaded yet, the packages above them are stood in
for by empty package modules that point at the real folders, the _pb2 modules are imported
from those folders, and the stand-ins are removed again: a later `import tensorflow` runs
for real and finds the same _pb2 modules (one descriptor each) already loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

__all__ = ["load"]


_PACKAGES = ("", "core", "core/framework", "core/protobuf", "core/example")
_MODULES = (
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.types_pb2",
)


def load() -> types.SimpleNamespace:
    """The proto modules a client needs, by their last name (predict_pb2, tensor_pb2, ...).

    Returns:
        A namespace of the modules.
    """
    stubs: list[str] = []
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")  # finds the folder; runs nothing
        root = os.path.dirname(spec.origin) if spec and spec.origin else None
        if root:
            for rel in _PACKAGES:
                name = ".".join(["tensorflow", *filter(None, rel.split("/"))])
                module = types.ModuleType(name)
                module.__path__ = [os.path.join(root, rel)]
                sys.modules[name] = module
                stubs.append(name)
    try:
        loaded = {m.rpartition(".")[2]: importlib.import_module(m) for m in _MODULES}
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(**loaded)
