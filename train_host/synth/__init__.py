"""Synthetic anomalies for training and checking detectors, each with its exact mask.

Synthesisers share one signature: ``fn(image uint8 C×H×W, rng, **params) -> (image, mask)``,
the mask (bool H×W) being exactly the pixels that changed. ``confetti`` is ADTR's.
"""
