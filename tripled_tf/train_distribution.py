"""tf.distribute for training: the strategy, the chief, the workers' agreement, synchronised
BatchNorm. TensorFlow is imported inside the functions (the entry point sets its logging first)."""
from __future__ import annotations

import keras

from tripled_tf import checkpoint


def make_strategy(name: str):
    """The tf.distribute strategy: "default" (one device), "mirrored" (every local GPU, or the
    logical CPUs when there is no GPU), "multi_worker" (MultiWorkerMirroredStrategy; TF_CONFIG)."""
    import tensorflow as tf
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Only the chief (worker 0) writes checkpoints, summaries and the result."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def check_workers_agree(strategy, step: int, batches: int) -> None:
    """Multi-worker: raises on every worker unless all of them start at the same step and data
    position, i.e. all restored the same checkpoint (or none).

    A worker that resumed another (or no) checkpoint would otherwise all-reduce gradients of other
    weights and train a different number of steps. The check is a collective (all-gather), so it is
    also a barrier: the chief writes its next checkpoint only after every worker has read its own.
    """
    import tensorflow as tf
    values = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([[step, batches]], tf.int64))  # one row per replica
    positions = strategy.gather(values, axis=0).numpy()
    if (positions != positions[:1]).any():
        raise checkpoint.RunFolderError(
            f"the workers start at different (step, batch) positions {positions.tolist()}: every "
            f"worker must --resume the chief's checkpoint, i.e. see the chief's run folder at its "
            f"--log_dir (shared storage, or a copy of the chief's folder; README: Training on several "
            f"machines)")


def set_synchronized_batch_norm(model) -> int:
    """Switches every BatchNormalization of ``model`` to statistics over the global batch (all
    replicas), as the reference's SyncBatchNorm; returns how many layers it switched. Keras reads
    the flag when a step is traced, so this must precede the first step."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count
