"""Graft's work layer: the pipeline's steps, each one module over a shared library.

A step module (ingest, validate, train, ...) imports only the library modules here (fs,
hashing, manifest, stats, data, model, ...) and graft.core, never another step.
"""

__all__: list[str] = []  # the modules are the API: import them by name
