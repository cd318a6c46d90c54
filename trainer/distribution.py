"""Distribution strategies: one device, Mirrored, MultiWorkerMirrored, TPU."""

import json
import os
from typing import Optional

from absl import logging
import tensorflow as tf


def get_strategy(num_gpus: int = 0, master: Optional[str] = None,
                 tpu: Optional[str] = None) -> tf.distribute.Strategy:
  """Picks the strategy the flags and environment ask for.

  * --tpu / --master: `TPUStrategy` on that TPU (name or grpc:// address);
  * TF_CONFIG with more than one worker: `MultiWorkerMirroredStrategy`;
  * --num_gpus > 1, or several visible logical CPUs/GPUs with num_gpus < 0:
    `MirroredStrategy`;
  * otherwise the default single-device strategy.
  """
  if tpu or master:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or master)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    logging.info("Using TPUStrategy on %s", tpu or master)
    return tf.distribute.TPUStrategy(resolver)
  tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
  if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
    logging.info("Using MultiWorkerMirroredStrategy from TF_CONFIG")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if num_gpus > 1:
    devices = [f"/gpu:{i}" for i in range(num_gpus)]
    logging.info("Using MirroredStrategy on %s", devices)
    return tf.distribute.MirroredStrategy(devices)
  if num_gpus < 0:
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")]
    logging.info("Using MirroredStrategy on all devices %s", devices)
    return tf.distribute.MirroredStrategy(devices)
  if num_gpus == 1:
    return tf.distribute.OneDeviceStrategy("/gpu:0")
  return tf.distribute.get_strategy()
