"""Where rx's and dinov2-knn's backbone features come from: random, learned on the station, or a file.

``--features random`` (the default) scores the backbone as built (random, or ``--weights``).
``--features station`` trains the backbone on the station's own good images with a
self-supervised pretext (`pretext.py`: CutPaste 3-way classification), fits the detector on
the random and on the learned features, and keeps the one with the higher validation
AUROC (`choice.py`); the learned backbone is written beside the run so other stations can
share it. ``--features FILE`` loads such a backbone. The detector's weights hold the
backbone either way, so export does not change. See docs/station-features.md.
"""

from .choice import fit_with_features

__all__ = ["fit_with_features"]
