"""Safe YAML with bounds: data only (SafeLoader), and a document that cannot blow up.

A 331-byte "billion laughs" file (anchors of anchors) expands to billions of nodes when
anything walks it (a repr in an error message, a deep copy, a dump). Here the composed node
graph is measured before any Python object is built: its size with every alias expanded,
its nesting depth, its alias count and its byte length all have limits, and a recursive
alias is refused.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # a config is a few KiB
MAX_ALIASES = 1000
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000  # scalars + collections, every alias expanded


class YamlRefused(yaml.YAMLError):
    """A document refused though it parses; the message says why."""


class YamlLimitError(YamlRefused):
    """A document over one of the bounds; the message says which."""


class DuplicateKeyError(YamlRefused):
    """A mapping with a key twice: PyYAML keeps the last in silence, dropping a setting (ninth audit B6)."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES} aliases (*name)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        """The node's own keys, before merges (`<<: *base` then a key is an override, not a repeat)."""
        seen: dict[Any, int] = {}  # key -> its line
        merges = [k.start_mark.line + 1 for k, _ in node.value if k.tag == "tag:yaml.org,2002:merge"]
        if len(merges) > 1:  # `<<` twice: PyYAML keeps the last merge's keys in silence (tenth audit B3)
            raise DuplicateKeyError(f"the merge key '<<' appears twice in one mapping (lines {merges[0]} and "
                                    f"{merges[1]}): merge a list instead, `<<: [*a, *b]`, if both are meant")
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                            f"{line}): which one is meant?")
                seen[key] = line
            except TypeError:  # an unhashable key: the base constructor names it
                continue
        return super().construct_mapping(node, deep)


def _plain_number(loader, node, construct):
    """YAML 1.1 reads `017` as octal 15, `0b11` as 3, `1:30` as 90 (base 60) and `1_000` as 1000: a value the
    user did not write, kept in silence (eleventh audit B2). Those spellings are refused; plain
    decimals, exponents and 0x hex read as before."""
    text = loader.construct_scalar(node)
    digits = text.lstrip("+-")
    if ("_" in text or ":" in text or (len(digits) > 1 and digits[0] == "0" and digits[1].isdigit())
            or digits.lower().startswith("0b")):  # 0b11: YAML 1.1 binary (twelfth audit)
        line = node.start_mark.line + 1
        raise YamlRefused(f"line {line}: {text!r} is a YAML 1.1 number ({construct(loader, node)!r}: octal, binary, "
                          "base 60 or with '_'); write it as a plain decimal, or quote it if it is a name")
    return construct(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: _plain_number(
    loader, node, yaml.SafeLoader.construct_yaml_int))
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: _plain_number(
    loader, node, yaml.SafeLoader.construct_yaml_float))


def _expanded_size(node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the document with every alias expanded; shared nodes are measured once."""
    key = id(node)
    if key in active:
        raise YamlLimitError("a recursive alias (an anchor used inside itself)")
    if key in memo:
        return memo[key]
    total = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        active.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        for child in children:
            total += _expanded_size(child, memo, active)
            if total > MAX_EXPANDED_NODES:
                break  # no need to count further
        active.discard(key)
    memo[key] = total
    return total


def load(text: str) -> Any:
    """yaml.safe_load with the bounds above; raises yaml.YAMLError (YamlLimitError for a bound)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YamlLimitError(f"{size} bytes, more than the {MAX_BYTES} allowed")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, {}, set())
        if n > MAX_EXPANDED_NODES:
            raise YamlLimitError(f"aliases expand it to more than {MAX_EXPANDED_NODES} values (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()
