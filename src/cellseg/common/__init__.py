"""Shared foundations of every stage: errors, image and file I/O, predicted instances, IoU, pixel size, devices."""
