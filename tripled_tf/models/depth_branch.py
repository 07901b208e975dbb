"""The depth branch of a depth model: images -> sigmoid disparities (what inference and the exports run)."""
from __future__ import annotations

from typing import Dict, List

import keras
import tensorflow as tf

from tripled_tf import checks


class DepthBranch(keras.layers.Layer):
    """What inference runs of a depth model: images -> sigmoid disparities, nothing else.

    It shares the model's layers (no copy) under the model's attribute names, so a weights file of
    the branch has the same entries as the model's file for those layers, and a SavedModel that
    tracks the branch holds the depth network alone (no pose network, appearance branch, feature
    extractor or optimiser). Created by :meth:`MonoDepthModel.depth_branch`; not an attribute of the
    model (Keras would then save the model's weights under a second path).

    ``call(images)``: images [B, H, W, 3] in [0, 1] -> [σ_0 .. σ_3], each [B, h, w, 1] float32, the
    model's ``call`` output.
    """

    def __init__(self, encoder, depth_decoder, feature_split=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.feature_split = feature_split
        self.depth_decoder = depth_decoder
        self.built = all(layer.built for layer in self.parts.values())

    @property
    def parts(self) -> Dict[str, keras.layers.Layer]:
        """The model's layers the branch runs, by their attribute names on the model."""
        parts = {"encoder": self.encoder, "depth_decoder": self.depth_decoder}
        if self.feature_split is not None:
            parts["feature_split"] = self.feature_split
        return parts

    def call(self, images, training=None) -> List[tf.Tensor]:
        images = checks.as_images(images, "images", channels=3)
        features = self.encoder(images, training=training)
        if self.feature_split is not None:
            features = self.feature_split(features, training=training)[0]
        return [tf.cast(d, tf.float32) for d in self.depth_decoder(features, training=training)]
