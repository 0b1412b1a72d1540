"""tf.train.Example without importing TensorFlow, for the Beam ingest workers.

Importing tensorflow.core.example.example_pb2 imports all of TensorFlow (seconds per
process), which every multi-processing Beam worker would pay before decoding one image.
The messages are rebuilt here from tensorflow/core/example/{feature,example}.proto (same
package, names, field numbers and types, so the bytes are the same wire format) in a
private descriptor pool, which cannot clash with TensorFlow's own when both are loaded.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "Example",
    "serialize",
]

_F = descriptor_pb2.FieldDescriptorProto


def _build():
    fd = descriptor_pb2.FileDescriptorProto(
        name="graft/tf_example.proto", package="tensorflow", syntax="proto3"
    )
    for name, ftype in (
        ("BytesList", _F.TYPE_BYTES),
        ("FloatList", _F.TYPE_FLOAT),
        ("Int64List", _F.TYPE_INT64),
    ):
        m = fd.message_type.add(name=name)
        f = m.field.add(name="value", number=1, label=_F.LABEL_REPEATED, type=ftype)
        if ftype != _F.TYPE_BYTES:
            f.options.packed = True
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")),
        start=1,
    ):
        feature.field.add(
            name=name,
            number=number,
            label=_F.LABEL_OPTIONAL,
            type=_F.TYPE_MESSAGE,
            type_name=f".tensorflow.{type_name}",
            oneof_index=0,
        )
    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    entry.field.add(
        name="value",
        number=2,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Feature",
    )
    features.field.add(
        name="feature",
        number=1,
        label=_F.LABEL_REPEATED,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Features.FeatureEntry",
    )
    example = fd.message_type.add(name="Example")
    example.field.add(
        name="features",
        number=1,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.Features",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build()


def serialize(features: dict[str, bytes | int]) -> bytes:
    """A serialized tf.train.Example: bytes values as bytes_list, ints as int64_list.

    Args:
        features: feature name to value: bytes, or an int.

    Returns:
        The Example's wire bytes, as TFRecord files hold them.
    """
    ex = Example()
    fmap = ex.features.feature
    for key, value in features.items():
        if isinstance(value, bytes):
            fmap[key].bytes_list.value.append(value)
        else:
            fmap[key].int64_list.value.append(int(value))
    return ex.SerializeToString()
