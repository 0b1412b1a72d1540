"""TF Serving's BatchingParameters message, for checking batching_parameters files offline.

tensorflow-serving-api does not ship session_bundle_config_pb2, so the message is rebuilt
here with the same package, field names, numbers and types as TF Serving's
tensorflow_serving/servables/tensorflow/session_bundle_config.proto; text_format parsing
against it rejects unknown fields and wrong types just like tensorflow_model_server does.
"""

from __future__ import annotations

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401 - registers google/protobuf/wrappers.proto
)

__all__ = ["parse_batching_parameters"]


_F = descriptor_pb2.FieldDescriptorProto
_FIELDS = [
    ("max_batch_size", 1, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value", _F.LABEL_OPTIONAL),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", _F.LABEL_OPTIONAL),
    ("allowed_batch_sizes", 6, None, _F.LABEL_REPEATED),
    ("pad_variable_length_inputs", 7, None, _F.LABEL_OPTIONAL),
]


def _build():
    fd = descriptor_pb2.FileDescriptorProto(
        name="graft/tfs_batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = fd.message_type.add(name="BatchingParameters")
    for name, number, type_name, label in _FIELDS:
        f = msg.field.add(name=name, number=number, label=label)
        if type_name:
            f.type, f.type_name = _F.TYPE_MESSAGE, type_name
        else:
            f.type = _F.TYPE_INT64 if name == "allowed_batch_sizes" else _F.TYPE_BOOL
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fd)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


BatchingParameters = _build()


def parse_batching_parameters(text: str):
    """Parse a batching config as tensorflow_model_server's --batching_parameters_file does.

    Args:
        text: the file's text, in protobuf text format.

    Returns:
        The BatchingParameters message.

    Raises:
        google.protobuf.text_format.ParseError: any error in the text.
    """
    return text_format.Parse(text, BatchingParameters())
