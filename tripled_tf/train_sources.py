"""Where training starts from: the model with its pretrained encoders, and the data sources.

:func:`build_model` resolves the encoders' init names (docs/method.md §1.2) to converted weight files;
:func:`training_sources` gives the training triplets (synthetic scene, KITTI raw, own video) and the
held-out frames with ground truth.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from tripled_tf import presets
from tripled_tf.data import frame_files, kitti, pipeline, synthetic, video
from tripled_tf.data.records import BAD_LIDAR, UNREADABLE_FILE, BadInputError, SkipReport
from tripled_tf.models import pretrained
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet
from tripled_tf.train_config import TrainConfig

# Named initialisations (docs/method.md §1.2) resolve to <weights_dir>/<init>_resnet<layers>.npz, the files
# tools/convert_resnet_weights.py writes; where that file is missing, the published checkpoint is
# downloaded and converted into the cache (tripled_tf.presets.fetch_encoder).
INITS = ("swav", "supervised", "moco", "simclr")


# Self-supervised inits whose authors published ResNet-50s only.
NO_PUBLISHED_RESNET18 = ("swav", "moco", "simclr")


def model_class(model_config: DepthModelConfig) -> type:
    """TripleDNet for a TripleDConfig, the baseline MonoDepthModel otherwise."""
    return TripleDNet if isinstance(model_config, TripleDConfig) else MonoDepthModel


def resolve_weights(spec: str, num_layers: int, weights_dir: str, flag: str) -> Optional[str]:
    """Path of the pretrained weights named by ``spec`` for a ResNet-``num_layers``, or None.

    ``spec``: "" / "none" (random init), a path, or an init name of ``INITS``, which resolves to
    ``<weights_dir>/<init>_resnet<layers>.npz`` where that file exists (a conversion of one's own
    wins), else to the published checkpoint downloaded and converted into the cache on first use
    (``$TRIPLED_TF_CACHE/encoders/<init>_resnet<layers>.npz``, :func:`tripled_tf.presets.fetch_encoder`).

    Raises:
      CheckpointError (one line): nothing published for that init and depth (SwAV and MoCo: ResNet-50
      only; SimCLR: no stable address), downloads off or failed (the line names the URL, the file to
      place and where), or a downloaded file that does not convert.
    """
    spec = (spec or "").strip()
    if not spec or spec.lower() == "none":
        return None
    if spec.lower() not in INITS:
        return spec
    init = spec.lower()
    path = pathlib.Path(weights_dir) / f"{init}_resnet{num_layers}.npz"
    if path.is_file():
        return str(path)
    convert_own = (f"convert a ResNet-{num_layers} checkpoint into that file with: python -m "
                   f"tools.convert_resnet_weights --input=CHECKPOINT --output={path} "
                   f"--num_layers={num_layers} (docs/training.md: Pretrained encoders)")
    depths = presets.published_depths(init)
    if num_layers not in depths:
        published = (f"{presets.PUBLISHERS[init]} published no ResNet-{num_layers} to download (only "
                     f"{', '.join(f'ResNet-{d}' for d in depths)})" if depths else
                     f"{presets.PUBLISHERS[init]} has no official download address of a torchvision-"
                     f"layout checkpoint")
        raise pretrained.CheckpointError(f"--{flag}={spec}: {path} does not exist and {published}; "
                                         f"{convert_own}, or pass --{flag}=none for random init")
    try:
        return str(presets.fetch_encoder(init, num_layers))
    except presets.PresetError as error:
        # The download's line names the URL and where to place the file; a file placed there is
        # converted on the next run.
        raise pretrained.CheckpointError(f"--{flag}={spec}: {path} does not exist; {error} (converted "
                                         f"on the next run); or {convert_own}") from None


def pretrained_encoders(config: TrainConfig, model: MonoDepthModel):
    """[(encoder, weights path, flag name)] for every encoder with pretrained weights to load.

    Pose and extractor encoders left empty follow the depth encoder's init *name* (not a path: its
    depth may differ). SwAV, MoCo and SimCLR published no ResNet-18, so a following ResNet-18 pose
    net takes "supervised" instead, and says so (the configs state it with --pose_encoder_weights).
    """
    follow = config.encoder_weights.strip().lower()
    follow = follow if follow in INITS else ""
    entries = [(model.encoder, config.encoder_weights, "encoder_weights")]
    pose_spec = config.pose_encoder_weights or follow
    if not config.pose_encoder_weights and follow in NO_PUBLISHED_RESNET18 and \
            model.pose_net.encoder.num_layers != 50:
        pose_spec = "supervised"
        print(f"pose encoder: {follow} published no ResNet-{model.pose_net.encoder.num_layers}; "
              f"using the supervised one (--pose_encoder_weights chooses)", flush=True)
    entries.append((model.pose_net.encoder, pose_spec, "pose_encoder_weights"))
    if getattr(model, "extractor", None) is not None:
        entries.append((model.extractor, config.extractor_weights or follow, "extractor_weights"))
    out = []
    for encoder, spec, flag in entries:
        path = resolve_weights(spec, encoder.num_layers, config.weights_dir, flag)
        if path:
            out.append((encoder, path, flag))
    return out


def build_model(config: TrainConfig, model_config: DepthModelConfig,
                load_pretrained: bool = True) -> MonoDepthModel:
    """The model (TripleDNet or baseline) with every variable created and the pretrained encoder
    weights loaded (unless ``load_pretrained`` is False, e.g. when a checkpoint replaces them)."""
    model = model_class(model_config)(model_config)
    model.build_for_size(config.height, config.width)
    if load_pretrained:
        for encoder, path, _ in pretrained_encoders(config, model):
            count = pretrained.load_encoder_weights(encoder, path)
            print(f"{encoder.name}: loaded {count} tensors from {path}", flush=True)
    return model


def pipeline_config(config: TrainConfig, model_config: Optional[DepthModelConfig] = None,
                    start_batch: int = 0) -> pipeline.PipelineConfig:
    """The input pipeline's settings for ``config``; ``model_config`` decides whether batches carry
    an erase mask, ``start_batch`` where a resumed run continues."""
    # Models without the inpainting parts get erase_count=0: no per-sample hole drawing (the mask is
    # then all ones). TripleDNet's extractor needs the default 16 holes.
    erase_count = 16 if model_config is not None and model_config.needs_erase_mask else 0
    return pipeline.PipelineConfig(height=config.height, width=config.width,
                                   batch_size=config.batch_size, seed=config.seed,
                                   # Ordered: a resumed run then sees exactly the batches the
                                   # interrupted one would have (costs little, see bench_data).
                                   deterministic=True,
                                   augment=config.augment, jitter_per_frame=config.jitter_per_frame,
                                   flip_keeps_intrinsics=config.flip_keeps_intrinsics,
                                   skip_bad_frames=config.skip_bad_frames, erase_count=erase_count,
                                   start_batch=start_batch)


def _kitti_held_out(config: TrainConfig, report: SkipReport) -> Optional[dict]:
    """Target frames of --val_split with ground truth from their Velodyne scans (Garg crop).
    With skip_bad_frames, frames whose scan, calibration or image is unusable are skipped and counted
    in ``report``."""
    if not config.val_split:
        return None
    records, split_report = kitti.kitti_records(config.data_path, config.val_split,
                                                splits_dir=config.splits_dir or None,
                                                skip_bad_frames=config.skip_bad_frames)
    for message, cause in zip(split_report.skipped, split_report.causes):
        report.add(message, cause)
    pipe = pipeline_config(config)
    images, depths = [], []
    for record in (r for r in records if r.depth_path):
        if len(depths) == config.num_val_samples:  # never for -1: every frame
            break
        folder, _, side = record.name.split()  # kitti_records names a record by its split line
        calib_dir = pathlib.Path(config.data_path) / folder.split("/")[0]
        cause = BAD_LIDAR
        try:
            depth = kitti.generate_depth_map(calib_dir, record.depth_path, cam=2 if side == "l" else 3)
            cause = UNREADABLE_FILE
            image = frame_files.load_resized_frame(record.target, pipe)
        except BadInputError as error:
            if not config.skip_bad_frames:
                raise
            report.add(f"{record.name}: {error}", cause)
            continue
        depths.append(depth)
        images.append(image)
    if not depths:
        raise BadInputError(config.val_split, f"--val_split: no frame with a usable Velodyne scan "
                                              f"({report.summary()})")
    return {"target": np.stack(images), "depth": depths, "crop": "garg"}


def training_sources(config: TrainConfig):
    """(make_dataset(pipeline_config, input_context=None) -> tf.data.Dataset, number of training
    triplets, held-out dict or None).

    The held-out dict has "target" [N, H, W, 3] at the training size, "depth" (N ground-truth maps at
    any size) and "crop"; it is None where no ground truth exists (own video) or num_val_samples=0.
    ``make_dataset.skip_report`` and ``make_dataset.held_out_skip_report`` count what was skipped
    (by cause) in the training triplets — also while decoding, so read it after training — and in
    the held-out frames.

    Raises:
      BadInputError: no usable training triplet (everything skipped) or fewer than a batch.
    """
    held_out_report = SkipReport()
    if config.dataset == "synthetic":
        arrays = synthetic.make_triplets(config.num_train_samples, config.height, config.width,
                                         seed=config.seed, split="train")
        held_out = None
        if config.num_val_samples:
            val = synthetic.make_triplets(config.num_val_samples, config.height, config.width,
                                          seed=config.seed, split="val")
            held_out = {"target": val["target"], "depth": val["depth"], "crop": None}

        def make_dataset(pipe, context=None):
            return pipeline.arrays_dataset(arrays, pipe, context)

        make_dataset.skip_report, make_dataset.held_out_skip_report = SkipReport(), held_out_report
        return make_dataset, config.num_train_samples, held_out
    if config.dataset == "kitti":
        records, report = kitti.kitti_records(config.data_path, config.split,
                                              use_calibration=config.use_calibration,
                                              skip_bad_frames=config.skip_bad_frames,
                                              splits_dir=config.splits_dir or None)
        held_out = _kitti_held_out(config, held_out_report) if config.num_val_samples else None
    else:
        fx, fy, cx, cy = config.intrinsics or (None,) * 4
        records, report = video.video_records(config.data_path, fx, fy, cx, cy,
                                              calibration=config.calibration or None,
                                              frame_stride=config.frame_stride,
                                              min_motion=config.min_motion,
                                              skip_bad_frames=config.skip_bad_frames)
        held_out = None
    print(f"{config.dataset}: {len(records)} training triplets ({report.summary()})", flush=True)
    if held_out_report:
        print(f"{config.dataset} held-out frames: {held_out_report.summary()}", flush=True)
    if len(records) < config.batch_size:
        raise BadInputError(config.data_path, f"{len(records)} usable training triplets, fewer than "
                                              f"--batch_size={config.batch_size} ({report.summary()})")

    def make_dataset(pipe, context=None):
        return pipeline.records_dataset(records, pipe, context, skip_report=report)

    make_dataset.skip_report, make_dataset.held_out_skip_report = report, held_out_report
    return make_dataset, len(records), held_out
