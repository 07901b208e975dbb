"""Learning on real data: the baseline trained from scratch on the shared 12-frame KITTI snippet.

The other tests check each part on its own; this one checks that the parts together learn from real
frames. ``python -m tripled_tf.train`` trains the plain depth + pose baseline (ResNet-18s, random init,
64x192, pose net at the training size) with the compiled train step and op determinism on the snippet's
10 frame triplets. Then, from first principles:

1. the mean photometric loss of the last epoch (5 steps: one pass over the same 10 triplets) is
   clearly below that of the first epoch, read from the TensorBoard scalars the trainer writes;
2. AbsRel against the frames' LiDAR ground truth (the trainer's held-out evaluation: Monodepth2's
   protocol, Garg crop, per-image median scaling, 80 m cap) is clearly below the untrained network's
   (same seed, step 0). The untrained network predicts a nearly constant depth (AbsRel 0.376 here; a
   constant depth gives 0.377), so this needs real structure.

Why only 20 steps. On this snippet the LiDAR AbsRel falls for about 30 steps and then rises again:
the lead car drives at the ego vehicle's speed, so it stays still in the image and the photometric
loss keeps falling by pushing it (and the road in front of it) to infinite depth — the known failure
of monocular self-supervision on objects moving with the camera. Measured with these settings
(in-process runs evaluated every 2 steps; untrained 0.376): 0.30 at step 20, 0.255 at 30, 0.37 at
34-38, 0.40 at 40, 0.69 at 80; seed 7: 0.27 at 20, 0.33-0.50 from step 30 on. Runs of 80-300 steps
(other learning rates, batch 1, with augmentation) ended at AbsRel 0.40-1.9, or with the disparity
saturated to a constant (0.377), while their photometric loss fell 8-53 %. So the run stops at step
20, before the lead car's hole forms, where both figures hold with about twice the margin asserted.
Colour jitter, flips and the decoder's dropout are off: on 10 triplets they made the loss curve and
the held-out figure jump from step to step (with dropout 0.5 and no augmentation the disparity
saturated to a constant and the loss fell < 1 %). About 1 min 45 s on 2 CPU cores.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
DRIVE = "2011_09_26/2011_09_26_drive_0000_sync"
NUM_TRIPLETS, BATCH_SIZE = 10, 2
NUM_STEPS = 20
# The windows compared: one epoch each, so both hold every triplet exactly once (the pipeline shuffles
# whole epochs) and the drop does not depend on which frames fell into them. 2-step windows (10 %)
# moved by several points with the frame mix.
WINDOW = NUM_TRIPLETS // BATCH_SIZE
# Measured here (deterministic, identical in repeated runs): photometric loss -29 %, AbsRel
# 0.376 -> 0.294 (-22 %; -24 % before the sample order stopped depending on the global seed, which
# --seed also sets). Other seeds, with that earlier order: loss -23 / -8 / -27 / -24 %, AbsRel -17 / -18 / -25 / -29 %
# (seeds 1, 2, 3, 7). Asserted: about half of this seed's figures.
MIN_LOSS_DROP = 0.15
MIN_ABS_REL_DROP = 0.10


def _scalars(log_dir: pathlib.Path, tag: str) -> dict:
    """{step: value} of one TensorBoard scalar in every event file under ``log_dir``."""
    values = {}
    for path in sorted(log_dir.rglob("events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def _window_means(running: dict, num_steps: int, window: int):
    """Mean loss of the first and of the last ``window`` steps.

    The trainer logs each term as Keras' running mean over the fit (m_n = mean of steps 1..n; the
    train step returns the trackers' results), after every step with summary_every=1. So the first
    window's mean is m_window, and the last window's is
    (N·m_N − (N − window)·m_{N−window}) / window.
    """
    assert sorted(running) == list(range(1, num_steps + 1)), sorted(running)
    first = running[window]
    last = (num_steps * running[num_steps]
            - (num_steps - window) * running[num_steps - window]) / window
    return first, last


def test_training_from_scratch_on_the_kitti_snippet_learns(shared_data, tmp_path):
    split = tmp_path / "snippet.txt"
    split.write_text("".join(f"{DRIVE} {i} l\n" for i in range(12)))
    run_dir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # A subprocess: op determinism is process-wide and would constrain the other tests.
    proc = subprocess.run(
        [sys.executable, "-m", "tripled_tf.train", "--model=baseline", "--dataset=kitti",
         f"--data_path={shared_data / 'kitti_raw'}", f"--split={split}", f"--val_split={split}",
         "--height=64", "--width=192", "--depth_layers=18", "--pose_layers=18", "--pose_height=0",
         "--pose_width=0", "--encoder_weights=none", f"--batch_size={BATCH_SIZE}",
         f"--num_steps={NUM_STEPS}", "--learning_rate=1e-4", "--warmup_steps=0", "--noaugment",
         "--dropout=0", "--seed=1024", "--deterministic", "--summary_every=1",
         "--image_summary_every=0", "--num_preview=1", "--verbose=0", f"--log_dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Really the snippet: frames 1-10 have both neighbours (0 and 11 are skipped), each a LiDAR scan.
    assert f"kitti: {NUM_TRIPLETS} training triplets (skipped 2" in proc.stdout, proc.stdout[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == NUM_STEPS and result["skipped_batches"] == 0, result
    assert result["metrics_before"]["num_images"] == NUM_TRIPLETS  # frames 1-10, Garg-cropped
    assert result["metrics_after"]["num_images"] == NUM_TRIPLETS

    first, last = _window_means(_scalars(run_dir / "logs", "loss/photometric"), NUM_STEPS, WINDOW)
    before, after = result["abs_rel_before"], result["abs_rel_after"]
    figures = (f"photometric loss, first {WINDOW} steps {first:.4f} -> last {WINDOW} steps "
               f"{last:.4f}; AbsRel {before:.4f} -> {after:.4f}")
    print(figures)
    assert np.isfinite([first, last, before, after]).all(), figures
    assert last <= (1.0 - MIN_LOSS_DROP) * first, figures
    assert after <= (1.0 - MIN_ABS_REL_DROP) * before, figures
