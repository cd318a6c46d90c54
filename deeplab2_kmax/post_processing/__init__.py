"""Post-processing of model outputs into panoptic maps."""
