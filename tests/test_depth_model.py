"""The baseline depth + pose model (tripled_tf.models.depth_model): outputs, losses, gradients to every
network, the train step (micro-batch accumulation, fitting a fixed batch), config round trip.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.data import synthetic
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel

HEIGHT, WIDTH = 64, 128


@pytest.fixture(scope="module")
def batch():
    data = synthetic.make_triplets(2, HEIGHT, WIDTH, seed=3, split="train")
    return {k: tf.constant(v) for k, v in data.items()}


def _model():
    model = MonoDepthModel(DepthModelConfig(depth_layers=10, pose_layers=10, pose_input_size=None))
    model.build_for_size(HEIGHT, WIDTH)
    return model


def test_outputs_and_predict_depth_range():
    model = _model()
    images = tf.random.uniform([2, HEIGHT, WIDTH, 3])
    disps = model(images, training=False)
    assert [tuple(d.shape) for d in disps] == [(2, HEIGHT // 2 ** (s + 1), WIDTH // 2 ** (s + 1), 1)
                                               for s in range(4)]
    disp, depth = model.predict_depth(images)
    assert disp.shape == (2, HEIGHT, WIDTH, 1)
    assert float(tf.reduce_min(depth)) >= 0.1 - 1e-6 and float(tf.reduce_max(depth)) <= 100.0 + 1e-3


def test_depth_branch_is_the_call_and_holds_only_the_depth_layers():
    model = _model()
    images = tf.random.uniform([2, HEIGHT, WIDTH, 3], seed=2)
    branch = model.depth_branch()
    for a, b in zip(model(images, training=False), branch(images, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert ({id(v) for v in branch.weights}
            == {id(v) for layer in (model.encoder, model.depth_decoder) for v in layer.weights})
    assert not {id(v) for v in branch.weights} & {id(v) for v in model.pose_net.weights}


def test_loss_gradients_reach_every_network(batch):
    model = _model()
    with tf.GradientTape() as tape:
        values = model.compute_losses(batch, training=True)
    grads = tape.gradient(values["loss"], model.trainable_variables)
    names = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not names, f"no gradient for {names[:5]}"
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    for part in ("depth_encoder", "depth_decoder", "pose_net"):
        norm = tf.linalg.global_norm([g for v, g in zip(model.trainable_variables, grads)
                                      if v.path.startswith(part)])
        assert float(norm) > 0, part
    assert 0.0 <= float(values["automask_fraction"]) <= 1.0
    # total = photometric + 1e-3 · smoothness
    np.testing.assert_allclose(float(values["loss"]),
                               float(values["photometric"]) + 1e-3 * float(values["smoothness"]),
                               rtol=1e-5)


@pytest.mark.parametrize("decoder", ["featdepth", "monodepth2"])
def test_reprojection_loss_equals_its_per_scale_definition(batch, decoder):
    """The batched loss (scales stacked along the batch axis) = docs/method.md §4 written scale by scale:
    mean over scales of mean(min(identity errors, warped errors)) + 1e-3 · Σ_s S_s / 2^s / 4."""
    from tripled_tf import geometry, losses

    model = MonoDepthModel(DepthModelConfig(pose_input_size=None, depth_decoder=decoder,
                                            identity_noise=0.0))
    model.build_for_size(HEIGHT, WIDTH)
    disparities = model(batch["target"], training=False)
    if decoder == "monodepth2":
        assert disparities[0].shape[1:3] == (HEIGHT, WIDTH) and model.output_stride == 1
    poses = model.predict_poses(batch, training=False)
    values = model._reprojection_losses(batch, disparities, poses)

    target, K = batch["target"], batch["K"]
    inv_K = tf.linalg.inv(K)
    sources = {"source_prev": batch["source_prev"], "source_next": batch["source_next"]}
    identity = [losses.photometric_error(s, target) for s in sources.values()]
    photometric = smoothness = 0.0
    for scale, disp in enumerate(disparities):
        _, depth = geometry.disp_to_depth(geometry.resize_bilinear(disp, [HEIGHT, WIDTH]), 0.1, 100.0)
        warped = [losses.photometric_error(geometry.warp(s, depth, poses[k], K, inv_K), target)
                  for k, s in sources.items()]
        errors = tf.concat(identity + warped, axis=-1)
        photometric += float(tf.reduce_mean(tf.reduce_min(errors, axis=-1))) / 4
        smoothness += float(losses.smoothness_loss(losses.normalize_disparity(disp), target)) / 2 ** scale / 4
    np.testing.assert_allclose(float(values["photometric"]), photometric, rtol=1e-5)
    np.testing.assert_allclose(float(values["smoothness"]), smoothness, rtol=1e-5)
    np.testing.assert_allclose(float(values["loss"]), photometric + 1e-3 * smoothness, rtol=1e-5)


def test_decoder_choice_and_dropout_defaults():
    from tripled_tf.models.tripled_net import TripleDConfig

    assert DepthModelConfig().dropout == 0.5  # FeatDepth's decoder: 0.5 on levels 4 and 5
    assert DepthModelConfig(depth_decoder="monodepth2").dropout == 0.0  # Monodepth2 has none
    assert DepthModelConfig(dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="no dropout"):
        DepthModelConfig(depth_decoder="monodepth2", dropout=0.5)
    with pytest.raises(ValueError, match="depth_decoder must be one of"):
        DepthModelConfig(depth_decoder="hrdepth")
    with pytest.raises(ValueError, match="FeatDepth's depth decoder"):
        TripleDConfig(depth_decoder="monodepth2")
    restored = DepthModelConfig.from_dict(DepthModelConfig(depth_decoder="monodepth2").to_dict())
    assert restored.depth_decoder == "monodepth2" and restored.dropout == 0.0


def test_accumulated_micro_batches_update_as_one_batch(batch):
    """--accumulate_steps=2 on two batches of 1 = one batch of 2, for a network without batch
    statistics (BatchNorm frozen: it normalises with its moving statistics), no dropout and no
    automask noise; clipping active (the clip sees the accumulated mean gradient)."""
    from tripled_tf.train_config import TrainConfig
    from tripled_tf.training import make_optimizer

    def trained(accumulate, batches):
        keras.utils.set_random_seed(0)
        model = MonoDepthModel(DepthModelConfig(pose_input_size=None, dropout=0.0,
                                                identity_noise=0.0))
        model.build_for_size(HEIGHT, WIDTH)
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        config = TrainConfig(height=HEIGHT, width=WIDTH, learning_rate=1e-3, warmup_steps=2,
                             grad_clip_norm=0.1, accumulate_steps=accumulate)
        model.compile(optimizer=make_optimizer(config), run_eagerly=True)
        initial = [w.numpy() for w in model.trainable_weights]
        for index, micro_batch in enumerate(batches):
            model.train_step(micro_batch)
            if index < len(batches) - 1:  # accumulated only: no update yet
                assert all(np.array_equal(a, w.numpy())
                           for a, w in zip(initial, model.trainable_weights))
        assert int(model.optimizer.iterations.numpy()) == 1
        # Adam's first moment after one update: (1 - beta_1) x the clipped gradient it applied.
        momentum = np.concatenate([v.numpy().ravel() for v in model.optimizer.variables
                                   if v.path.endswith("_momentum")])
        moved = any(not np.array_equal(a, w.numpy()) for a, w in zip(initial, model.trainable_weights))
        return momentum, moved, float(model.optimizer.learning_rate)

    halves = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(2)]
    whole, accumulated = trained(1, [batch]), trained(2, halves)
    assert whole[1] and accumulated[1]
    # The schedule counts updates: both runs are at update 1 of a 2-step warm-up.
    assert accumulated[2] == pytest.approx(whole[2])
    # The same clipped gradient (the mean of the two micro-batches' gradients = the gradient of the
    # batch's mean loss); clipping is active: the raw gradient's norm is far above 0.1.
    assert np.linalg.norm(whole[0]) == pytest.approx(0.1 * (1 - 0.9), rel=1e-4)
    np.testing.assert_allclose(accumulated[0], whole[0], rtol=1e-4,
                               atol=1e-4 * float(np.abs(whole[0]).max()))


def test_train_step_fits_a_fixed_batch(batch):
    # A few Adam steps on one batch must lower its photometric loss: the gradients point downhill.
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(5e-4, global_clipnorm=35.0))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    before = float(model.compute_losses(batch, training=False)["photometric"])
    model.fit(data, steps_per_epoch=12, epochs=1, verbose=0, shuffle=False)
    after = float(model.compute_losses(batch, training=False)["photometric"])
    assert after < before * 0.95, (before, after)


def test_missing_batch_key_is_a_clear_error(batch):
    model = _model()
    broken = {k: v for k, v in batch.items() if k != "K"}
    with pytest.raises(ValueError, match="missing 'K'"):
        model.compute_losses(broken)


def test_config_round_trip():
    model = MonoDepthModel(DepthModelConfig(depth_layers=50, pose_input_size=(64, 96)))
    clone = MonoDepthModel.from_config(model.get_config())
    assert clone.config == model.config
    with pytest.raises(ValueError, match="sampling"):
        DepthModelConfig(sampling="nearest")
