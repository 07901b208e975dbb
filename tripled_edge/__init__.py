"""tripled_edge: the depth network on a device (TFLite conversion, runtime without TensorFlow).

The package imports no TensorFlow (tests/test_runtime.py checks it with TensorFlow made unimportable), so
the folder can be copied alone to a device whose Python has numpy and LiteRT (``ai-edge-litert``).
``convert`` and ``gpu_compat`` use TensorFlow inside their functions: they run where the model is
exported. The benchmark that needs the training package lives in ``tools/bench_edge.py``.
"""
