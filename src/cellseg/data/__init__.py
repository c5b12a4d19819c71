"""Training data in: dataset layouts and converters, the split, tiles, target maps, stain, augmentation, the demo dataset."""
