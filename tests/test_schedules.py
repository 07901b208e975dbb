"""The learning-rate schedule (tripled_tf.schedules) against the reference formula."""

import numpy as np

from tripled_tf.schedules import WarmupStepDecay


def test_warmup_step_decay_matches_reference_formula():
    schedule = WarmupStepDecay(1e-4, warmup_steps=500, warmup_ratio=1 / 3, decay_steps=[1000],
                               decay_factor=0.5)
    # lr_it = lr·(1 − (1 − it/500)·(2/3)): it=0 -> lr/3, it=250 -> 2/3·lr, it>=500 -> lr
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 250, 500, 999, 1000, 5000)],
                               [1e-4 / 3, 2e-4 / 3, 1e-4, 1e-4, 5e-5, 5e-5], rtol=1e-5)
