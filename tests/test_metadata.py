"""tripled_edge.metadata / convert.with_metadata: the model's embedded metadata round trip, read
without TensorFlow's flatbuffer parser.
"""
import pytest
import tensorflow as tf

from tripled_edge import convert, metadata


def _tflite(function, *specs) -> bytes:
    concrete = tf.function(function).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def test_metadata_round_trip_without_tensorflow_parsing():
    model = _tflite(lambda x: tf.nn.relu(x) * 2.0, tf.TensorSpec([1, 4, 4, 3], tf.float32))
    assert metadata.read_metadata(model) is None
    values = {"input_height": 64, "min_depth": 0.1, "text": "ü"}
    tagged = convert.with_metadata(model, values)
    assert metadata.read_metadata(tagged) == values
    retagged = convert.with_metadata(tagged, {"input_height": 32})
    assert metadata.read_metadata(retagged) == {"input_height": 32}
    with pytest.raises(ValueError, match="TFL3"):
        metadata.read_metadata(b"not a model at all")
