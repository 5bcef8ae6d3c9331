"""Behaviour-level tests of safe_yaml's depth bound (issue 25, the survivors of mutmut on
safe_yaml.py): the depth is the document's nesting, counted the same wherever the deep branch
sits, after any number of siblings; each refusal says which bound in its sentence."""

from __future__ import annotations

import pytest

from distill_export import safe_yaml


def _deep_after_siblings(depth: int, siblings: int) -> str:
    """A list `depth` levels deep whose every level holds `siblings` scalars and an empty mapping before
    the next level: the deep branch comes last, after nodes that were entered and left."""
    before = ", ".join(["0"] * siblings + ["{}"])
    return f"[{before}, " * (depth - 1) + "[]" + "]" * (depth - 1)


@pytest.mark.parametrize("siblings", [0, 1, 3])
def test_depth_limit_is_exact_wherever_the_deep_branch_sits(siblings):
    limit = safe_yaml.MAX_DEPTH
    assert safe_yaml.load(_deep_after_siblings(limit, siblings)) is not None
    with pytest.raises(safe_yaml.YamlLimitError, match=f"nested deeper than {limit} levels"):
        safe_yaml.load(_deep_after_siblings(limit + 1, siblings))
    # the same document as a mapping of mappings, the deep key last
    doc = "".join(f"{'  ' * i}a{i}: 1\n{'  ' * i}k{i}:\n" for i in range(limit)) + f"{'  ' * limit}end: 1\n"
    with pytest.raises(safe_yaml.YamlLimitError, match="deeper"):
        safe_yaml.load(doc)
    assert safe_yaml.load("".join(f"{'  ' * i}a{i}: 1\n{'  ' * i}k{i}:\n" for i in range(limit - 2))
                          + f"{'  ' * (limit - 2)}end: 1\n") is not None


def test_a_second_document_after_a_deep_one_starts_from_zero():
    limit = safe_yaml.MAX_DEPTH
    deep = "[" * limit + "]" * limit
    for _ in range(3):  # loads do not share a depth count
        assert safe_yaml.load(deep) is not None


def test_each_refusal_says_which_bound():
    with pytest.raises(safe_yaml.YamlLimitError) as err:
        safe_yaml.load("a: &a [*a]\n")
    assert str(err.value) == "a recursive alias (an anchor used inside itself)"
