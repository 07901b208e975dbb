"""Edge deployment (TFLite conversion, runtime without TensorFlow). Must import without TensorFlow."""
