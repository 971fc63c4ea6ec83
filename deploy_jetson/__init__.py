"""deploy_jetson: signed bundles, flashing, on-device engine builds, device assets."""
