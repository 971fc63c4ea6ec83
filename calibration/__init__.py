"""calibration: per-station thresholds from score distributions."""
