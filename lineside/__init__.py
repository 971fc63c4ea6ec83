"""lineside: one CLI over the five packages (see ARCHITECTURE in the docs)."""

__version__ = "0.1.0"
