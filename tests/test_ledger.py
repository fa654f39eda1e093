"""The claims ledger (CLAIMS.md) and the chapters agree: every claim has an executed check.

A checking cell is a code cell tagged ``claim-XX`` or whose first line is ``# claim: XX`` (several
IDs may be listed, comma-separated). It must contain an assertion (``assert``, ``np.testing``,
``torch.testing``) so that it fails when the claim is false.
"""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
ID_RE = re.compile(r"^[A-Z]\d+$")
ASSERTION_RE = re.compile(r"\bassert\b|np\.testing\.|numpy\.testing\.|torch\.testing\.")


COLUMNS = ["ID", "Claim", "Paper", "Chapter", "check", "Status"]


def rows() -> list[list[str]]:
    """CLAIMS.md's table rows (ID | Claim | Paper | Chapter | check | Status), cells stripped."""
    found = []
    for line in (ROOT / "CLAIMS.md").read_text().splitlines():
        cells = [c.strip() for c in line.replace("\\|", "¦").strip().strip("|").split("|")]
        if len(cells) >= 5 and ID_RE.match(cells[0]):
            found.append(cells)
    return found


def ledger() -> dict[str, list[int]]:
    """Claim ID -> the chapters that check it, read from CLAIMS.md's table."""
    return {cells[0]: [int(c) for c in re.findall(r"\d+", cells[3])] for cells in rows()}


def chapters() -> dict[int, Path]:
    return {int(p.name[:2]): p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))}


def checking_cells() -> dict[str, list[tuple[str, str]]]:
    """Claim ID -> [(notebook name, cell source)] for every cell that names it."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in chapters().values():
        for cell in jupytext.read(path).cells:
            if cell.cell_type != "code":
                continue
            ids = [t[len("claim-"):] for t in cell.metadata.get("tags", []) if t.startswith("claim-")]
            first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
            m = re.match(r"#\s*claims?:\s*(.+)$", first)
            if m:
                ids += [s.strip() for s in m.group(1).split(",")]
            for cid in ids:
                found.setdefault(cid, []).append((path.name, cell.source))
    return found


def test_ledger_has_the_papers_claims():
    ids = ledger()
    expected = {"F1", "F2", "F3", "F4", "F5", "N1", "N2", "N3", "N4", "T1", "T2", "T3", "G1",
                "S1", "S2", "S3", "S4", "S5", "S6", "E1", "E2", "E3", "E4", "E5", "O1", "O2", "O3"}
    assert expected <= set(ids), f"missing from CLAIMS.md: {sorted(expected - set(ids))}"
    assert all(ids[c] for c in ids), "every claim names the chapter that checks it"


def test_ledger_columns_end_with_a_status():
    header = next(line for line in (ROOT / "CLAIMS.md").read_text().splitlines()
                  if line.startswith("| ID |"))
    names = [c.strip() for c in header.strip().strip("|").split("|")]
    assert len(names) == len(COLUMNS) and names[:4] == COLUMNS[:4] and names[-1] == "Status", names
    bad = [cells[0] for cells in rows() if len(cells) != len(COLUMNS) or not cells[5]]
    assert not bad, f"rows without exactly {len(COLUMNS)} cells and a non-empty Status: {bad}"


# ASCII formulas the ledger used before it was written in TeX (the claims page typesets $...$).
ASCII_MATH_RE = re.compile(r"\b(sqrt|abar|alpha|beta|sigma|eps|eta|gamma|theta)\b|_\{|\^\{|<=|>=")


def test_claims_are_written_in_tex():
    """Every claim's formulas are inline TeX: $ balanced, no ``\\|`` in math, no ASCII maths outside it."""
    problems = []
    for cells in rows():
        claim = cells[1]
        if claim.count("$") % 2 or "¦" in claim:
            problems.append(f"{cells[0]}: unbalanced $ or \\| in the claim (use \\mid / \\Vert)")
            continue
        prose = re.sub(r"`[^`]*`", "", re.sub(r"\$[^$]*\$", "", claim))
        if ASCII_MATH_RE.search(prose):
            problems.append(f"{cells[0]}: ASCII mathematics outside $...$: {ASCII_MATH_RE.search(prose).group(0)!r}")
    assert not problems, "\n".join(problems)


def test_no_cell_names_an_unknown_claim():
    unknown = {cid: [nb for nb, _ in cells] for cid, cells in checking_cells().items() if cid not in ledger()}
    assert not unknown, f"cells name claim IDs that are not in CLAIMS.md: {unknown}"


@pytest.mark.parametrize("claim_id", sorted(ledger()))
def test_claim_has_an_asserting_cell(claim_id):
    wanted = ledger()[claim_id]
    present = chapters()
    if not any(ch in present for ch in wanted):
        pytest.skip(f"{claim_id}: its chapter(s) {wanted} are not written yet")
    cells = checking_cells().get(claim_id, [])
    assert cells, f"{claim_id} has no checking cell (tag claim-{claim_id} or '# claim: {claim_id}')"
    asserting = [nb for nb, src in cells if ASSERTION_RE.search(src)]
    assert asserting, f"{claim_id}'s cells ({[nb for nb, _ in cells]}) contain no assertion"
