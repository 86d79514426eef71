"""docs/architecture.md's module map names every module of the package, file for file."""

from __future__ import annotations

import re

from conftest import REPO


def test_the_module_map_matches_the_tree_file_for_file():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text[text.index("## Modules"):text.index("### Process lifetimes")]
    mapped = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))
    tree = {str(p.relative_to(REPO / "vmlaunch")) for p in (REPO / "vmlaunch").rglob("*.py")
            if p.name != "__init__.py"}
    assert mapped == tree, (f"missing from the map: {sorted(tree - mapped)}; "
                            f"not in the tree: {sorted(mapped - tree)}")
