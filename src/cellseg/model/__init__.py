"""The Mask R-CNN: architecture, cascade heads, pretrained weights, checkpoints, EMA, initialisation."""
