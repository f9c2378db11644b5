"""The documentation names only what exists: every ``gflow_dist.module.name`` it quotes
imports, and every repository path and relative link it gives is there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("*/README.md")])
DOTTED_NAME = re.compile(r"\bgflow_dist(?:\.[A-Za-z_]\w*)+")
REPOSITORY_PATH = re.compile(r"(?<![\w./-])(?:gflow_dist|benchmarks|tests|deploy|configs)/"
                             r"[\w./-]*\w")
RELATIVE_LINK = re.compile(r"\]\((?!https?://)([^)#\s]+)(?:#[^)]*)?\)")


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or an attribute of the longest module it starts with."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_the_docs_name_only_code_paths_and_links_that_exist(document):
    text = document.read_text()
    missing_names = sorted({name for name in DOTTED_NAME.findall(text) if not _resolves(name)})
    missing_paths = sorted({path for path in REPOSITORY_PATH.findall(text)
                            if not (REPO / path).exists()})
    missing_links = sorted({link for link in RELATIVE_LINK.findall(text)
                            if not (document.parent / link).exists()})
    assert (missing_names, missing_paths, missing_links) == ([], [], [])
