"""Graft: a folder of labelled images -> a served image classifier, by transfer learning.

The layers are mapped in from the repository's top-level folders (see pyproject.toml):
graft.core (ground), graft.components and graft.serving (the work), graft.pipeline (the top).
"""

__all__ = ["__version__"]


__version__ = "0.1.0"
