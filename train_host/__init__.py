"""train_host: datasets, anomaly synthesis, the model families, training, metrics, export.

Torch lives here and only here.
"""
