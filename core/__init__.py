"""Graft's ground layer: config models, logging, the backbone registry, path helpers.

Imported by every other layer; imports none of them.
"""
