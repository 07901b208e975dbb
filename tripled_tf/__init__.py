"""tripled_tf: TripleDNet self-supervised monocular depth estimation in Keras 3 / TensorFlow."""
import os as _os

__version__ = "0.1.0"

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI / BF16 / AMX;
# elsewhere (AVX2 machines, most AMD EPYC / Ryzen, laptops) it runs the slower Eigen kernels. With
# oneDNN the 640x192 batch-4 baseline step (configs/kitti_md2.cfg) went from 8.9 s to 6.9-7.2 s on
# a 2-core AVX2 EPYC (tools/bench_train.py runs; README "Performance"). It must be set before
# TensorFlow is imported, so it is set here, as a default: TF_ENABLE_ONEDNN_OPTS=0 in the
# environment still turns it off.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
