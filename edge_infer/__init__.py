"""edge_infer: the line-side runtime, and the contracts every other package builds on.

Frames in, verdicts out: ``imageio`` reads and decodes, ``preprocess`` turns an image into
the model's input, ``backends`` run the bundle's model, ``decide`` turns raw scores into a
verdict. ``bundle`` is the on-disk contract between the host and the device.

This package never imports torch or the other lineside packages.
"""

__version__ = "0.1.0"
