"""The ONNX export (Jetson's route: ONNX -> TensorRT) against Keras through ONNX Runtime, for both depth
networks, in float32 and with float16 weights. Needs tf2onnx, onnx and onnxruntime (``pip install -e
.[dev]`` installs them; CI does).

The networks are untrained (random initialisation, ResNet-10 encoders): the export must reproduce the network,
whatever its weights.
"""
import numpy as np
import pytest

from tripled_tf import deploy, inference

NETWORKS = ("tripled", "baseline")
# Relative disparity error against Keras float32, (median, max). float32: the same arithmetic up to
# operation order. float16 weights (what a TensorRT --fp16 engine stores): ~2^-11 relative rounding
# per weight, averaged over each sum, as the TFLite fp16 mode (tests/test_export.py).
TOLERANCES = {"fp32": (1e-5, 1e-4), "fp16": (2e-3, 2e-2)}


@pytest.fixture(scope="module")
def onnx_exports(module_tmp, untrained_run):
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install -e .[dev])")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[dev])")
    cache = {}

    def export(network):
        if network not in cache:
            run = deploy.load_run(untrained_run(module_tmp(network), network))
            cache[network] = run, deploy.export_onnx(run, module_tmp("onnx") / "depth.onnx")
        return cache[network]
    return export


def _with_float16_weights(path) -> bytes:
    """The ONNX model with every float32 initializer rounded to float16 (and kept as float32)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    return model.SerializeToString()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("network", NETWORKS)
def test_onnx_export_reproduces_the_keras_network(onnx_exports, network, precision):
    import onnx
    import onnxruntime

    run, path = onnx_exports(network)
    metadata = {entry.key: entry.value for entry in onnx.load(path).metadata_props}
    assert (int(metadata["input_height"]), int(metadata["input_width"])) == (run.height, run.width)
    model = path if precision == "fp32" else _with_float16_weights(path)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(path).graph.node].count("Resize") == 0  # depth-to-space
    frames = np.random.default_rng(0).random((2, run.height, run.width, 3)).astype(np.float32)
    name = session.get_inputs()[0].name
    ours = np.concatenate([session.run(None, {name: frame[None]})[0] for frame in frames])[..., 0]
    sigma = inference.predict_disparities(run.model, frames)
    min_disp, max_disp = 1.0 / run.model.config.max_depth, 1.0 / run.model.config.min_depth
    expected = min_disp + (max_disp - min_disp) * sigma
    relative = np.abs(ours - expected) / expected
    median_tolerance, max_tolerance = TOLERANCES[precision]
    assert np.median(relative) < median_tolerance, (np.median(relative), relative.max())
    assert relative.max() < max_tolerance, (np.median(relative), relative.max())
