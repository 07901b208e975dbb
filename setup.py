"""tripled_tf: TripleDNet self-supervised monocular depth in Keras 3 / TensorFlow."""
from setuptools import find_packages, setup

setup(
    name="tripled_tf",
    version="0.1.0",
    description=("TripleDNet (BMVC 2022) self-supervised monocular depth estimation in "
                 "Keras 3 / TensorFlow, with edge (TFLite) and server (SavedModel) export"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # tools/ (benchmarks, data preparation) stays uninstalled scripts run from the repository root
    # (python tools/x.py or python -m tools.x): a top-level package named "tools" in site-packages
    # would collide with other projects' tools.
    packages=find_packages(include=["tripled_tf", "tripled_tf.*", "tripled_edge", "tripled_edge.*"]),
    install_requires=[
        # TF 2.21 is the newest release; it requires keras>=3.12 and brings Keras 3 as tf.keras.
        "tensorflow>=2.21,<3",
        "keras>=3.10",
        "numpy>=2",  # opencv-python-headless 5 needs numpy 2
        "opencv-python-headless",
        "absl-py",
        "tensorboard",  # no longer installed by TF 2.21; needed to view the training logs
    ],
    extras_require={
        # pytest-xdist: the suite runs in 2 processes (pyproject addopts); ai-edge-litert: the edge
        # runtime's tests (tripled_edge.runtime without TensorFlow); tf2onnx / onnx / onnxruntime:
        # the ONNX export checked against Keras (tests/test_onnx.py; they install beside TF 2.21 and
        # numpy 2 without changing either).
        "dev": ["pytest>=7", "pytest-xdist>=3", "ai-edge-litert", "tf2onnx>=1.17", "onnx", "onnxruntime"],
        # The device side: tripled_edge.runtime needs only numpy and a TFLite runtime (LiteRT).
        "edge": ["ai-edge-litert"],
        # python -m tripled_tf.export --format=onnx (tf2onnx 1.17 works with TF 2.21 / numpy 2).
        "onnx": ["tf2onnx>=1.17", "onnx", "onnxruntime"],
    },
    # Console scripts beside python -m tripled_tf.<tool> (tripled_tf/console.py).
    entry_points={"console_scripts": [
        "tripled-train=tripled_tf.console:train",
        "tripled-predict=tripled_tf.console:predict",
        "tripled-evaluate=tripled_tf.console:evaluate",
        "tripled-export=tripled_tf.console:export",
        "tripled-convert=tripled_tf.console:convert",
    ]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
