"""From images to instances: tiled prediction, TTA and fold fusion, calibration, the operating points, segment."""
