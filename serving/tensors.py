"""numpy -> TensorProto for Predict requests and responses, built directly.

tf.make_tensor_proto is generic and costs ~0.2 ms per tensor; the server calls this for
every output of every request, the client for every request's image bytes.
"""

from __future__ import annotations

import numpy as np

from graft.serving import protos

__all__ = ["tensor_proto", "to_numpy"]


_pb = protos.load()  # no TensorFlow import: the client uses this module too
tensor_pb2, tensor_shape_pb2, types_pb2 = _pb.tensor_pb2, _pb.tensor_shape_pb2, _pb.types_pb2


def tensor_proto(v: np.ndarray) -> tensor_pb2.TensorProto:
    """A numpy array as a TensorProto, without TensorFlow for the usual dtypes.

    float32 goes as tensor_content, bytes/strings as string_val, anything else via TF.

    Args:
        v: the array.

    Returns:
        The TensorProto.
    """
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in v.shape]
    )
    if v.dtype == np.float32:
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=shape,
            tensor_content=np.ascontiguousarray(v).tobytes(),
        )
    if v.dtype.kind in "OS":
        t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        t.string_val.extend(v.ravel().tolist())
        return t
    import tensorflow as tf

    return tf.make_tensor_proto(v)


def to_numpy(t) -> np.ndarray:
    """A float or string TensorProto as numpy, without TensorFlow (what Predict answers hold).

    Args:
        t: a TensorProto of DT_FLOAT or DT_STRING.

    Returns:
        The array, in the proto's shape (strings as an object array of bytes).
    """
    shape = [d.size for d in t.tensor_shape.dim]
    if t.dtype == types_pb2.DT_FLOAT:
        if t.tensor_content:
            return np.frombuffer(t.tensor_content, dtype=np.float32).reshape(shape)
        return np.array(t.float_val, dtype=np.float32).reshape(shape)
    if t.dtype == types_pb2.DT_STRING:
        return np.array(list(t.string_val), dtype=object).reshape(shape)
    raise ValueError(f"to_numpy handles float and string tensors, got dtype {t.dtype}")
