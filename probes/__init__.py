"""Probe layer: model loading, hooked runs, interventions and decoding.

This is the only layer of mechscope that adds hooks to a model.
"""
