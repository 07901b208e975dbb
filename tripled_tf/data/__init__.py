"""Data sources (built-in synthetic scene, KITTI, own video) and the tf.data pipeline."""
