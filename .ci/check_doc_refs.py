#!/usr/bin/env python3
r"""Fail when a citation of a design document does not resolve inside the repository.

A citation is a Markdown file name in capitals (``docs/ALGORITHMS.md``, ``README.md``), optionally followed by
section numbers: ``docs/ALGORITHMS.md §3.2``, ``§3.2-3.4``, ``section 3``, ``sections 2 and 6.2``,
``docs/TESTBED.md 1.4``. It resolves when

* the file exists (for a Markdown link, its target is checked, not its text): a name with a folder (``docs/BUILD.md``) relative to the repository root or to the citing
  file's folder; a bare name (``README.md``) in the citing file's folder or at the root; and
* every cited section number is the number of a heading in that file (``## 3. ...``, ``### 3.2 ...``).

Scans the files git tracks plus untracked, not ignored ones (text files only). Usage, from anywhere:
``python .ci/check_doc_refs.py [--verbose]``; exit status 1 lists every broken citation as ``path:line``.

The older citation forms (``ALGORITHMS.md 3.2``, ``TESTBED.md section 5``, no folder) are rewritten to
``docs/ALGORITHMS.md §3.2`` by this idempotent command, run from the repository root (it only touches these tokens,
which appear in comments and docstrings):

    git grep -lIzE '(ALGORITHMS|BUILD|TESTBED)\.md' -- . ':!docs/ALGORITHMS.md' ':!docs/BUILD.md' \
        ':!docs/TESTBED.md' ':!.ci/check_doc_refs.py' | xargs -0 -r perl -pi -e '
      s{(?<![\w/.\[-])(?<!\]\()((?:ALGORITHMS|BUILD|TESTBED)\.md)}{docs/$1}g;
      s{(docs/(?:ALGORITHMS|BUILD|TESTBED)\.md),? sections? (\d[\d.]*\d|\d) and (\d[\d.]*\d|\d)}{$1 §$2 and §$3}g;
      s{(docs/(?:ALGORITHMS|BUILD|TESTBED)\.md),? sections? (\d)}{$1 §$2}g;
      s{(docs/(?:ALGORITHMS|BUILD|TESTBED)\.md) (\d)}{$1 §$2}g;
      s{(docs/ALGORITHMS\.md) §6 \(identical}{$1 §5.3 (identical}g;
      s{(docs/ALGORITHMS\.md §3\.8), open question 12\)}{$1)}g'
"""

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent

SUFFIXES = {".py", ".md", ".h", ".hpp", ".c", ".cc", ".cpp", ".cu", ".cuh", ".sh", ".toml", ".cfg", ".txt", ".yml",
            ".yaml", ".ini", ".rst"}
NAMES = {"Makefile", "run"}

NUMBER = r"\d+(?:\.\d+)*"
#: One section reference: an optional "§" / "section(s)" and a number, or a range of numbers.
SECTION = rf"(?:§\s?|sections?\s+)?{NUMBER}(?:\s?[-–]\s?{NUMBER})?"
CITATION = re.compile(
    rf"(?<![\w./\[-])(?P<path>(?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)"  # not a Markdown link's text: its target counts
    rf"(?P<sections>,?\s(?:§\s?|sections?\s+){NUMBER}(?:\s?[-–]\s?{NUMBER})?"  # "§3.2", ", section 1"
    rf"(?:(?:,\s?|\s(?:and|to)\s)(?:§\s?)?{NUMBER}(?:\s?[-–]\s?{NUMBER})?)*"  # ", 3.4", " and 6.2"
    rf"|\s{NUMBER}(?:\s?[-–]\s?{NUMBER})?(?:,\s?(?:§\s?)?{NUMBER}(?:\s?[-–]\s?{NUMBER})?)*)?"  # bare " 3.2, 3.5"
)
HEADING = re.compile(rf"^#+\s+(?P<number>{NUMBER})\.?\s")


def candidate_files() -> List[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk, skipping build outputs
        skip = {".git", ".venv", "build", ".cache", "__pycache__", "node_modules"}
        paths = [p for p in ROOT.rglob("*") if not any(part in skip for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.is_file() and (p.suffix in SUFFIXES or p.name in NAMES))


def section_numbers(doc: Path, cache: Dict[Path, Set[str]]) -> Set[str]:
    if doc not in cache:
        found = set()
        in_code = False
        for line in doc.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("```"):
                in_code = not in_code
            match = None if in_code else HEADING.match(line)
            if match:
                found.add(match.group("number"))
        cache[doc] = found
    return cache[doc]


def resolve(cited: str, source: Path) -> Optional[Path]:
    options = [source.parent / cited, ROOT / cited]
    for option in options:
        if option.is_file():
            return option.resolve()
    return None


def cited_sections(text: str) -> Iterator[str]:
    """Every number in a sections suffix; both ends of a range."""
    yield from re.findall(NUMBER, text)


def broken_citations(path: Path, cache: Dict[Path, Set[str]]) -> Iterator[Tuple[int, str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        for match in CITATION.finditer(line):
            cited, sections = match.group("path"), match.group("sections") or ""
            doc = resolve(cited, path)
            if doc is None:
                yield lineno, match.group(0).strip(), f"{cited} is not a file in the repository"
                continue
            known = section_numbers(doc, cache)
            missing = [s for s in cited_sections(sections) if s not in known]
            if missing:
                yield lineno, match.group(0).strip(), f"no section {', '.join(missing)} in {doc.relative_to(ROOT)}"


def main(argv: List[str]) -> int:
    verbose = "--verbose" in argv
    cache: Dict[Path, Set[str]] = {}
    problems, checked = [], 0
    for path in candidate_files():
        if path == Path(__file__).resolve():
            continue  # this file's docstring shows the citation forms
        for lineno, citation, why in broken_citations(path, cache):
            problems.append(f"{path.relative_to(ROOT)}:{lineno}: {citation!r}: {why}")
        checked += 1
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} broken citation(s) of design documents in {checked} files", file=sys.stderr)
        return 1
    if verbose:
        print(f"every citation of a design document resolves ({checked} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
