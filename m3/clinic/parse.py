"""Parsers for the doctor's stage outputs: differential lists, test orders, the final diagnosis.

Models answer in free text; the stage verifiers need structured items. The parsers accept the
formats the stage instructions ask for (numbered or bulleted lines) and the usual deviations
(one comma/semicolon separated line, "1) ...", "- ...", bold markers, trailing explanations).

    parse_list("1. Myasthenia gravis\n2. Lambert-Eaton syndrome")  -> ["Myasthenia gravis", "Lambert-Eaton syndrome"]
    parse_final_diagnosis("... Final diagnosis: Myasthenia gravis.")  -> "Myasthenia gravis"
"""

from __future__ import annotations

import re

_BULLET = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|\(\d+\))\s+")
_FINAL = re.compile(r"final\s+diagnosis\s*(?:is|:|-)\s*(.+)", re.IGNORECASE)
_EXPLAIN = re.compile(r"\s+(?:-|\u2013|\u2014|:)\s+.*$|\s*\(.*\)\s*$")  # "X - because ..." / "X (likely)"


def _clean(item: str) -> str:
    item = item.replace("**", "").replace("__", "").strip()
    item = _EXPLAIN.sub("", item).strip()
    return item.strip(" .;,:")


def parse_list(text: str, max_items: int = 20) -> list[str]:
    """Items of a numbered/bulleted list, or of one comma/semicolon separated line, in order,
    deduplicated (case-insensitive). Lines that are not list items are ignored when any line is."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    bulleted = [_BULLET.sub("", ln) for ln in lines if _BULLET.match(ln)]
    if bulleted:
        raw = bulleted
    else:
        body = re.sub(r"^[^:\n]{0,60}:\s*", "", " ".join(lines))  # drop a lead-in like "Tests:"
        raw = re.split(r"[;,]|\band\b", body)
    out: list[str] = []
    seen: set[str] = set()
    for item in raw:
        clean = _clean(item)
        if clean and clean.lower() not in seen and len(clean) <= 120:
            seen.add(clean.lower())
            out.append(clean)
    return out[:max_items]


def parse_final_diagnosis(text: str) -> str:
    """The diagnosis after "Final diagnosis:"; else the first list item; else the first line."""
    # the last statement wins: models sometimes restate after reasoning
    match = next(reversed(list(_FINAL.finditer(text))), None)
    if match is not None:
        return _clean(match.group(1).splitlines()[0])
    items = parse_list(text, max_items=1)
    if items:
        return items[0]
    first = text.strip().splitlines()
    return _clean(first[0]) if first else ""
