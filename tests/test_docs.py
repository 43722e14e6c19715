"""Every citation of the project's docs resolves: ``docs/paper.md §4.5``, ``docs/paper.md §2 claim 6``,
``docs/design.md`` (and the older names ``PAPER.md`` / ``DESIGN.md`` of the notes they replace) in
code, configs, README, docs, scripts, benchmarks and study reports name a heading that exists."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "docs" / "paper.md"
DESIGN = ROOT / "docs" / "design.md"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".csv"}
SKIP = {"tests/test_docs.py"}  # this file spells the patterns out

# a mention of a doc, and which doc it is
MENTION = re.compile(r"(?P<paper>docs/paper\.md|(?:(?:\.\./|/work/)?shared/)?PAPER\.md|\bPAPER(?=\s+§))"
                     r"|(?P<design>docs/design\.md|(?:(?:\.\./|/work/)?shared/)?DESIGN\.md)")
# the citation after a mention ends at a sentence or clause end, a blank line or the next mention
END = re.compile(r"[.;:](?=\s|$)|\n\s*\n")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)(?:\s?-\s?§?(\d+(?:\.\d+)?))?")
NUMBERS = r"(\d+(?:\s*(?:,|/|and)\s*\d+)*)"
CLAIMS = [re.compile(r"§\s?2\s+claims?\s+" + NUMBERS), re.compile(r"claims?\s+" + NUMBERS + r"\s+of\s+§\s?2\b")]
HEADING = re.compile(r"^#{1,6}\s+(?:§\s*)?(\d+(?:\.\d+)?)\.?\s+(.*)$", re.M)

# The numbering the code cites, fixed: the sections of the reconstruction notes docs/paper.md replaces,
# the claims of §2 as conf/study numbers them (0: the project's negative control) and the open
# questions of §6.
PAPER_SECTIONS = (["0", "1", "2", "3", "4", "5", "6", "7"] + [f"1.{i}" for i in range(1, 7)]
                  + [f"3.{i}" for i in range(1, 6)] + [f"4.{i}" for i in range(1, 8)]
                  + [f"6.{i}" for i in range(1, 11)])
PAPER_CLAIMS = list(range(0, 10))


def headings(doc: Path) -> dict[str, str]:
    """Section number -> heading text."""
    return {m.group(1): m.group(2) for m in HEADING.finditer(doc.read_text())}


def claims(doc: Path) -> set[int]:
    """Claims K with a heading '2.K Claim K ...'."""
    out = set()
    for number, text in headings(doc).items():
        m = re.match(r"Claim (\d+)\b", text)
        if number.startswith("2.") and m and number == f"2.{m.group(1)}":
            out.add(int(m.group(1)))
    return out


def tree_files() -> list[Path]:
    """Tracked and untracked (not ignored) text files of the checkout; every text file without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [ROOT / f for f in out if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return sorted(p for p in set(files) if p.suffix in TEXT_SUFFIXES and p.is_file()
                  and p.relative_to(ROOT).as_posix() not in SKIP)


def expand(first: str, last: str | None) -> list[str]:
    """'4.1', '4.4' -> 4.1 .. 4.4 (a range within one section)."""
    if not last or "." not in first or "." not in last or first.split(".")[0] != last.split(".")[0]:
        return [first] + ([last] if last else [])
    major, lo, hi = first.split(".")[0], int(first.split(".")[1]), int(last.split(".")[1])
    return [f"{major}.{i}" for i in range(lo, hi + 1)]


def citations(text: str):
    """(doc, kind, value, offset): kind 'file' (the doc itself), 'section' or 'claim'."""
    flat = re.sub(r"\n[ \t]*(?:#+|//|\*)?[ \t]*", " ", text)  # a citation may wrap onto a comment line
    flat = flat.replace("\n", " ")
    mentions = list(MENTION.finditer(flat))
    for i, m in enumerate(mentions):
        doc = "paper" if m.group("paper") else "design"
        stop = mentions[i + 1].start() if i + 1 < len(mentions) else len(flat)
        window = flat[m.end():min(stop, m.end() + 160)]
        end = END.search(window)
        window = window[:end.start()] if end else window
        yield doc, "file", None, m.start()
        for s in SECTION.finditer(window):
            for number in expand(s.group(1), s.group(2)):
                yield doc, "section", number, m.start()
        for pattern in CLAIMS:
            for c in pattern.finditer(window):
                for k in re.findall(r"\d+", c.group(1)):
                    yield doc, "claim", int(k), m.start()


def unresolved() -> list[str]:
    docs = {"paper": PAPER, "design": DESIGN}
    known = {name: set(headings(path)) if path.exists() else set() for name, path in docs.items()}
    paper_claims = claims(PAPER) if PAPER.exists() else set()
    bad, seen = [], 0
    for path in tree_files():
        text = path.read_text(errors="replace")
        for doc, kind, value, _ in citations(text):
            seen += 1
            where = path.relative_to(ROOT).as_posix()
            if not docs[doc].exists():
                bad.append(f"{where}: cites {docs[doc].relative_to(ROOT)}, which does not exist")
            elif kind == "section" and value not in known[doc]:
                bad.append(f"{where}: {docs[doc].name} §{value} has no heading")
            elif kind == "claim" and (doc != "paper" or value not in paper_claims):
                bad.append(f"{where}: §2 claim {value} has no heading '2.{value} Claim {value}'")
    assert seen > 50, f"only {seen} citations found: is the scan broken?"
    return sorted(set(bad))


def test_every_citation_in_the_tree_resolves():
    assert unresolved() == []


def test_paper_keeps_the_numbering_the_code_cites():
    have = headings(PAPER)
    missing = [n for n in PAPER_SECTIONS if n not in have]
    assert not missing, f"docs/paper.md lacks the headings {missing}"
    assert set(PAPER_CLAIMS) <= claims(PAPER)


def test_every_claim_of_every_suite_and_the_report_resolve():
    """The report prints 'docs/paper.md §2 claim K' for each claim's paper_claim K."""
    have = claims(PAPER)
    for suite in sorted((ROOT / "conf" / "study").glob("*.yaml")):
        for claim in yaml.safe_load(suite.read_text())["claims"]:
            if claim.get("paper_claim") is None:  # an exploratory claim (or a control) cites no paper claim
                continue
            assert int(claim["paper_claim"]) in have, (suite.name, claim["id"])
    report = (ROOT / "sparsity_exp" / "study" / "report.py").read_text()
    assert re.search(r"(docs/paper\.md|PAPER\.md) §2 claim \{", report), "report.py no longer cites claims"


def test_the_scan_finds_what_it_should():
    """The citation parser on the forms the tree uses (a check of the check)."""
    text = ("x (PAPER.md §4.1, claim 1/8 of §2): y\n# PAPER.md §1.1-1.2 and the\n"
            "PAPER.md §4.1-§4.4; docs/paper.md §2 claims 1, 7 and 8. (PAPER §4.5) DESIGN.md\n"
            "the T5 recipe, docs/paper.md\n    §4.4) z. PAPER_SETTINGS = 1; PAPER / 'x'")
    got = [(d, k, v) for d, k, v, _ in citations(text)]
    sections = [v for d, k, v in got if k == "section"]
    assert sections == ["4.1", "2", "1.1", "1.2", "4.1", "4.2", "4.3", "4.4", "2", "4.5", "4.4"]
    assert [v for d, k, v in got if k == "claim"] == [1, 8, 1, 7, 8]
    assert [d for d, k, v in got if k == "file"] == ["paper"] * 5 + ["design", "paper"]


@pytest.mark.parametrize("bad", ["docs/paper.md §4.9", "PAPER.md §2 claim 12", "docs/design.md §42"])
def test_an_unknown_section_is_caught(bad, tmp_path):
    docs = {"paper": PAPER, "design": DESIGN}
    known = {name: set(headings(path)) for name, path in docs.items()}
    found = list(citations(f"see {bad}."))
    assert any((k == "section" and v not in known[d]) or (k == "claim" and v not in claims(PAPER))
               for d, k, v, _ in found)
