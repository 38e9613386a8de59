""".ci/check_doc_refs.py: citations of design documents must resolve to a file and a section heading."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_doc_refs", ROOT / ".ci" / "check_doc_refs.py")
check_doc_refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_doc_refs)

# Spelled in pieces, so that this file itself holds no citation for the checker (or a rewrite) to find.
ALG, BLD = "ALGORITHMS" + ".md", "BUILD" + ".md"


def _broken(tmp_path, monkeypatch, text):
    monkeypatch.setattr(check_doc_refs, "ROOT", tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / ALG).write_text("# A\n## 1. Notation\n### 3.2 Exact\n```\n## 9. in a code block\n```\n")
    source = tmp_path / "mod.py"
    source.write_text(text)
    return [why for _, _, why in check_doc_refs.broken_citations(source, {})]


def test_resolving_citations_pass(tmp_path, monkeypatch):
    ok = (f'"""See docs/{ALG} §3.2, docs/{ALG} section 1, docs/{ALG} 1-3.2 and docs/{ALG} §1 and §3.2;\n'
          'results/demo.md is an output, not a design document."""\n')
    assert _broken(tmp_path, monkeypatch, ok) == []


def test_broken_citations_fail(tmp_path, monkeypatch):
    problems = _broken(tmp_path, monkeypatch, f"# {ALG} 3.2; docs/{BLD} §4; docs/{ALG} §3.3, 9\n")
    assert problems == [f"{ALG} is not a file in the repository", f"docs/{BLD} is not a file in the repository",
                        f"no section 3.3, 9 in docs/{ALG}"]


def test_the_repository_resolves():
    assert check_doc_refs.main([]) == 0
