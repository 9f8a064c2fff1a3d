"""Compile targets beyond the portable SavedModel (neuron).
"""
