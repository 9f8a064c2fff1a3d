"""Compilation targets: turn an exported BERT SavedModel into a model for a specific accelerator."""
