"""A read-only view of the config that lets a step see only the sections it declared.

A step's declared sections are its cache key. If a step could read a value outside them, a
cached output would silently carry a stale value; so the runner and the Kubeflow runtime
hand each step this view, and a read outside the declaration fails at once, naming the key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ScopedConfig", "UndeclaredConfigRead"]


class UndeclaredConfigRead(AttributeError):
    """A step read a config key that is not among its declared sections."""


def _alias_name(model: BaseModel, name: str) -> str:
    """`validate_` is spelled `validate` in YAML and in declarations."""
    field = type(model).model_fields.get(name)
    return (field.alias or name) if field else name


def _field_name(model: BaseModel, key: str) -> str:
    for name, field in type(model).model_fields.items():
        if key in (name, field.alias):
            return name
    raise KeyError(key)


class ScopedConfig:
    """Attribute access like the config; each read is recorded in `reads`."""

    def __init__(
        self,
        model: BaseModel,
        sections: tuple[str, ...],
        step: str = "?",
        _prefix: str = "",
        _reads: set[str] | None = None,
    ):
        self._model = model
        self._sections = tuple(sections)
        self._step = step
        self._prefix = _prefix
        self.reads: set[str] = set() if _reads is None else _reads

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = self._prefix + _alias_name(self._model, name)
        value = getattr(self._model, name)
        if any(path == s or path.startswith(s + ".") for s in self._sections):
            self.reads.add(path)
            return value
        if isinstance(value, BaseModel) and any(s.startswith(path + ".") for s in self._sections):
            return ScopedConfig(value, self._sections, self._step, path + ".", self.reads)
        raise UndeclaredConfigRead(
            f"step '{self._step}' read config key '{path}', which is not among its declared "
            f"sections ({', '.join(self._sections) or 'none'}); declare it in graft.pipeline.dag "
            "so that it keys the step's cache"
        )

    def values(self) -> dict[str, Any]:
        """The declared sections' values as JSON-able data, keyed by their dotted path."""
        out: dict[str, Any] = {}
        for dotted in self._sections:
            node: Any = self._model
            for part in dotted.split("."):
                node = getattr(node, _field_name(node, part))
            out[dotted] = node.model_dump(mode="json") if isinstance(node, BaseModel) else node
        return out
