"""Reading a large checks file quickly: libyaml, and the document built without PyYAML's detours.

With libyaml (``yaml.CSafeLoader``) parsing is C, but each node is still resolved and constructed
in Python, one generator and a few dictionary look-ups per node: for 50,000 checks that is most
of the load. Here a plain scalar's tag is resolved once per distinct text (``GET``, ``status``,
``200`` repeat thousands of times), and the document is built by one recursive walk over the
nodes. Anything this walk does not handle as PyYAML would (merge keys ``<<``, a tag of its own, a
key that cannot be a dictionary key, an alias that contains itself) sends the whole document
back through PyYAML's own constructor, which also raises its errors with their marks.

The garbage collector is paused while the document is built: it would otherwise walk the growing
heap of new containers again and again (a cost that grows faster than the file), and the document
holds no cycles for it to find.
"""

from __future__ import annotations

import gc
from typing import Any

import yaml

__all__ = ["compose_yaml", "load_yaml"]

_BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR, _MAPPING, _SEQUENCE = yaml.ScalarNode, yaml.MappingNode, yaml.SequenceNode


class _Unusual(Exception):
    """The document needs PyYAML's own constructor."""


class _Loader(_BASE):  # type: ignore[misc]
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is _SCALAR and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return super().resolve(kind, value, implicit)

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        if self.yaml_path_resolvers:  # none for the safe loader: skip the call per node
            super().descend_resolver(current_node, current_index)

    def ascend_resolver(self) -> None:
        if self.yaml_path_resolvers:
            super().ascend_resolver()

    def construct_document(self, node: Any) -> Any:
        try:
            return self._build(node, {}, set())
        except (_Unusual, TypeError, RecursionError):
            self.constructed_objects: dict[Any, Any] = {}
            self.recursive_objects: dict[Any, Any] = {}
            return super().construct_document(node)

    def _build(self, node: Any, built: dict[int, Any], building: set[int]) -> Any:
        cls, tag = type(node), node.tag
        if cls is _SCALAR:  # immutable: an alias to one needs no sharing
            return node.value if tag == _STR else self.construct_object(node, deep=True)
        key = id(node)
        if key in built:  # an alias: the same object, as PyYAML gives
            return built[key]
        if key in building:
            raise _Unusual
        building.add(key)
        value: Any
        if cls is _MAPPING and tag == _MAP:
            value = {}
            for key_node, value_node in node.value:
                if key_node.tag == _STR and type(key_node) is _SCALAR:
                    name = key_node.value
                elif key_node.tag == _MERGE:
                    raise _Unusual
                else:
                    name = self._build(key_node, built, building)
                if value_node.tag == _STR and type(value_node) is _SCALAR:
                    value[name] = value_node.value
                else:
                    value[name] = self._build(value_node, built, building)
        elif cls is _SEQUENCE and tag == _SEQ:
            value = [
                item.value
                if item.tag == _STR and type(item) is _SCALAR
                else self._build(item, built, building)
                for item in node.value
            ]
        else:
            raise _Unusual
        building.discard(key)
        built[key] = value
        return value


def load_yaml(text: str) -> Any:
    """The YAML document in ``text``, as ``yaml.safe_load`` reads it; raises ``yaml.YAMLError``."""
    paused = gc.isenabled()
    gc.disable()
    try:
        loader = _Loader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    finally:
        if paused:
            gc.enable()


def compose_yaml(text: str) -> Any:
    """The node graph of ``text`` (each node with its line and column), read as ``load_yaml``
    reads it; raises ``yaml.YAMLError``."""
    paused = gc.isenabled()
    gc.disable()
    try:
        loader = _Loader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    finally:
        if paused:
            gc.enable()
