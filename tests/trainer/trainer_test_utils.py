"""A tiny experiment (config + data) for the trainer tests."""

import os
import pathlib

from deeplab2_kmax import config_loader
from deeplab2_kmax.data import build_synthetic_data

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "synthetic" / "kmax_tiny_r50_os32.textproto"


def tiny_config(data_dir, steps=4, crop=64):
  """The demo config shrunk further: crop 64, 8 centres, batch 2."""
  config = config_loader.load_config(str(DEMO_CONFIG), {"DATA_DIR": data_dir})
  model = config.model_options
  model.backbone.backbone_width_multiplier = 0.125
  model.max_deeplab.pixel_decoder.width_multiplier = 0.125
  transformer = model.max_deeplab.transformer_decoder
  transformer.num_mask_slots = 8
  transformer.channels = 32
  transformer.ffn_channels = 64
  del transformer.num_blocks[:]
  transformer.num_blocks.extend([1, 1, 1])
  model.max_deeplab.instance_discrimination_sample_k = 64
  model.max_deeplab.semantic_sample_k = 64
  for options in (config.train_dataset_options, config.eval_dataset_options):
    options.batch_size = 2
    del options.crop_size[:]
    options.crop_size.extend([crop, crop])
  del config.export_options.crop_size[:]
  config.export_options.crop_size.extend([crop, crop])
  config.export_options.jit_compile = False
  config.evaluator_options.jit_compile = False
  trainer = config.trainer_options
  trainer.solver_options.training_number_of_steps = steps
  trainer.solver_options.warmup_steps = 1
  trainer.steps_per_loop = 2
  trainer.save_checkpoints_steps = 2
  trainer.save_summaries_steps = 2
  config.evaluator_options.eval_interval = steps
  return config


def lean_config(data_dir, steps=4, crop=64, semantic_head=False):
  """`tiny_config` with one kMaX layer and, by default, no semantic head.

  For the tests of the training machinery (resume, kill and restart,
  replicas, workers): most of their time is tracing the training step, and
  this cuts it by about 40 %. Without the semantic loss the model has no
  semantic head.
  """
  config = tiny_config(data_dir, steps=steps, crop=crop)
  config.model_options.max_deeplab.transformer_decoder.num_blocks[:] = [
      0, 0, 1]
  if not semantic_head:
    config.trainer_options.loss_options.ClearField("semantic_loss")
  return config


def tiny_data(directory, num_train=8, num_val=4):
  data_dir = os.path.join(directory, "data")
  if not os.path.exists(os.path.join(data_dir, "panoptic_val.json")):
    build_synthetic_data.build(data_dir, num_train=num_train, num_val=num_val,
                               seed=0, num_shards=1, image_size=64,
                               progress=False)
  return data_dir


def accept_every_segment(config):
  """Post-processing that keeps every slot and pixel, even after a few steps.

  Every slot confident, pixels above the uniform probability 1 / 8 of the
  tiny config's 8 slots (so every pixel is in a mask), no overlap or area
  limit.
  """
  maskwise = config.evaluator_options.maskwise_postprocessing
  maskwise.transformer_class_confidence_threshold_thing = 0.0
  maskwise.transformer_class_confidence_threshold_stuff = 0.0
  maskwise.overlapping_threshold = 0.0
  config.evaluator_options.pixel_confidence_threshold = 1 / 8
  config.evaluator_options.thing_area_limit = 0
  config.evaluator_options.stuff_area_limit = 0
