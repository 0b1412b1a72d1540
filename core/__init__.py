"""Graft's ground layer: config models, logging, the backbone registry, path helpers.

Imported by every other layer; imports none of them.
"""

__all__: list[str] = []  # the modules are the API: import them by name
