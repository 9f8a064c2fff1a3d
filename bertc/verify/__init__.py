"""Proving an artifact equals its unrewritten model: comparison, artifact
verification, per-pass error, inspection. May import: sources, model, text, artifact,
runtime, passes.
"""
