"""Small lexical helpers shared by the judges, rewards and evaluations (pure Python, no model).

    from m3.text.lexical import split_sentences, tokenize, keywords, negation_cues, is_negated, extract_quantities
    split_sentences("Take 2.5 mg, e.g. at night. See Dr. Lee!")   # ['Take 2.5 mg, e.g. at night.', 'See Dr. Lee!']
    keywords("Advises seeking emergency care")                   # ['seek', 'emergency', 'car'] (stemmed)
    extract_quantities("50mg twice daily for 5 days")            # [(50.0, 'mg'), (2.0, 'times/day'), (5.0, 'day')]

Limits: English only; rule-based, so it is predictable rather than linguistically complete.
Sentence splitting knows a fixed abbreviation list and treats every line break as a boundary.
`stem` is a deliberately crude suffix stripper (plurals, -ing, -ed) used only to compare words
with each other, never to display them. Negation is scoped by a token window inside one clause
(punctuation, "but", "if", "when", "because", ... end a clause), so long-range negation, double
negation and "not only ... but" are misread.
Quantities cover common clinical units and frequencies, not every notation (no dates, no ratios).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# --- sentences ---------------------------------------------------------------------------------

# A period after one of these never ends a sentence: titles and Latin ("Dr. Lee", "e.g. Tylenol").
# Other abbreviations ("b.i.d.", "p.m.", "tab.") need no list: a lowercase next word already
# keeps the sentence open, and units are left out on purpose because "The dose is 5 mg. Take..." ends.
ABBREVIATIONS = frozenset(
    "e.g i.e eg ie cf viz vs dr drs mr mrs ms prof st no nos fig figs approx ca al sr jr mt".split()
)

_BULLET = re.compile(r"^\s*(?:[-*+•·‣–]|\d{1,3}[.)]|[a-zA-Z][.)](?=\s))\s+")
_MD_NOISE = re.compile(r"^\s*#{1,6}\s*|\*\*|__|`")
# candidate boundary: . ! ? (plus closing quotes/brackets) then whitespace
_BOUNDARY = re.compile(r"([.!?]+[\"')\]]*)(\s+)")


def _ends_with_abbreviation(chunk: str) -> bool:
    m = re.search(r"(\S+)\.$", chunk)
    return bool(m) and m.group(1).lower().lstrip("([\"'") in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences: line breaks and bullets always split; '.', '!', '?' split
    unless the dot belongs to an abbreviation ("e.g.", "Dr.") or a number ("2.5 mg").
    Markdown bullets, headers and emphasis markers are removed; empty pieces are dropped."""
    out: list[str] = []
    for raw_line in text.splitlines():
        line = _MD_NOISE.sub("", _BULLET.sub("", raw_line)).strip()
        if not line:
            continue
        start = 0
        for m in _BOUNDARY.finditer(line):
            end = m.end(1)
            piece = line[start:end]
            nxt = line[m.end() : m.end() + 1]
            if m.group(1) == "." and _ends_with_abbreviation(piece):
                continue
            if nxt.islower():  # "... 5 p.m. and", "... b.i.d. with food": the sentence goes on
                continue
            out.append(piece.strip())
            start = m.end()
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return [s for s in out if re.search(r"\w", s)]


# --- words -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens; keeps contractions ("don't") and decimals ("2.5") whole."""
    text = text.lower().replace("’", "'").replace("‘", "'")
    return _TOKEN.findall(text)


# Generic English function words plus rubric/chat filler ("patient", "user", "response", "advise")
# that appear in nearly every HealthBench criterion and so carry no content. Medically meaningful
# short words that generic lists drop or that look like filler are kept on purpose: "er", "iv",
# "bp", "hr", "ct", "ed", "am"/"pm" never appear here, nor do negation words (see NEGATION_CUES:
# they are not keywords, they are handled separately by `negation_cues`).
STOPWORDS = frozenset(
    """
    a an the and or but if then than so as of at by for with about into onto over under from to in on
    until unless while because since though although whether via per within through during
    up down out off again further once here there when where why how all any both each few more most
    other some such only own same too very can will just should would could may might must shall
    also well even still yet ever already perhaps maybe really quite rather much many lot lots
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom whose this
    that these those am is are was were be been being have has had having do does did doing
    get gets got getting go goes going make makes made take takes taken let lets
    thing things something anything everything someone anyone one ones way ways kind sort
    patient patients user users person people individual response responses assistant model answer
    advise advises advised advising recommend recommends recommended recommending recommendation
    mention mentions mentioned mentioning state states stated stating explain explains explained
    include includes included including suggest suggests suggested suggesting ask asks asked asking
    provide provides provided providing note notes noted encourage encourages encouraged
    clearly appropriate appropriately specific specifically important importantly possible possibly
    e g eg ie etc please like need needs needed
    """.split()
)

NEGATION_CUES = frozenset(
    """
    not no never none nor neither nothing nobody nowhere without cannot cant dont doesnt didnt
    wont shouldnt isnt arent wasnt werent avoid avoids avoided avoiding against refrain refrains
    deny denies denied denying contraindicated unnecessary unneeded ineffective stop stops
    discontinue discontinued
    """.split()
)


def stem(word: str) -> str:
    """Crude suffix stripping so "antibiotics"/"antibiotic" and "advise"/"advises"/"advised"/
    "advising" compare equal. Not a linguistic stem: only ever compare stems with stems."""
    w = word.lower().replace("'", "")
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) >= 5:
        return w[:-3] + "y"
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("ing") and len(w) >= 6:
        w = w[:-3]
    elif w.endswith("ed") and len(w) >= 5 and not w.endswith("eed"):
        w = w[:-2]
    else:
        return w[:-1] if w.endswith("e") and len(w) >= 4 else w
    if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in "lsz":  # "stopped" -> "stop"
        w = w[:-1]
    return w


def is_negation_cue(token: str) -> bool:
    t = token.lower().replace("’", "'")
    return t in NEGATION_CUES or t.replace("'", "") in NEGATION_CUES or t.endswith("n't")


def keywords(text: str) -> list[str]:
    """Content words of `text`: stemmed tokens minus stopwords and negation cues, first-seen order,
    deduplicated. Numbers are kept (they are compared by `extract_quantities` too)."""
    out: dict[str, None] = {}
    for tok in tokenize(text):
        if tok in STOPWORDS or is_negation_cue(tok) or (len(tok) < 2 and not tok.isdigit()):
            continue
        out.setdefault(stem(tok), None)
    return list(out)


# --- negation ----------------------------------------------------------------------------------

# Negation does not cross these: punctuation, contrast words and subordinators, so in
# "Seek care if you can't breathe" the "can't" stays inside the if-clause.
_CLAUSE_BREAK = re.compile(
    r"[,;:()]|\s[-–—]\s|\b(?:but|however|although|though|whereas|instead|if|unless|when|because|since|until)\b",
    re.I,
)
# Predicate cues also negate the subject just before them ("Antibiotics will not help", "X is
# contraindicated"); the others ("avoid", "without", "no") only govern what follows them.
_BACKWARD_CUES = frozenset(
    {"not", "cannot", "never", "contraindicated", "unnecessary", "unneeded", "ineffective"}
)


def _is_backward_cue(token: str) -> bool:
    return token in _BACKWARD_CUES or (token.endswith(("n't", "nt")) and is_negation_cue(token))


def negation_cues(text: str) -> list[str]:
    """The negation cues present in `text`, in order ("don't" and "do not" both count)."""
    return [t for t in tokenize(text) if is_negation_cue(t)]


def has_negation(text: str) -> bool:
    return bool(negation_cues(text))


def is_negated(text: str, terms: list[str] | None = None, window: int = 6, back: int = 3) -> bool:
    """True when a negation cue governs one of `terms` (words or their `stem`s) in the same clause:
    the term follows the cue within `window` tokens ("avoid giving aspirin"), or precedes a
    predicate cue ("not", "n't", "never", "contraindicated", ...) within `back` tokens
    ("Antibiotics will not help"). Without `terms`, any cue anywhere in the text counts."""
    if not terms:
        return has_negation(text)
    targets = set(terms) | {stem(t) for t in terms}
    for clause in _CLAUSE_BREAK.split(text):
        toks = tokenize(clause)
        cue_at = [i for i, t in enumerate(toks) if is_negation_cue(t)]
        if not cue_at:
            continue
        hit_at = [i for i, t in enumerate(toks) if t in targets or stem(t) in targets]
        for c in cue_at:
            for h in hit_at:
                if 0 < h - c <= window or (0 < c - h <= back and _is_backward_cue(toks[c])):
                    return True
    return False


# --- quantities --------------------------------------------------------------------------------


class Quantity(NamedTuple):
    """A number with a normalised unit, e.g. Quantity(50.0, "mg"); compares equal to (50.0, "mg")."""

    value: float
    unit: str


# alias -> canonical unit. Matched case-insensitively except the bare temperature letters.
_UNIT_ALIASES = {
    "mg": ["mg", "milligram", "milligrams"],
    "mcg": ["mcg", "µg", "μg", "ug", "microgram", "micrograms"],
    "g": ["g", "gm", "gram", "grams"],
    "kg": ["kg", "kilogram", "kilograms", "kilo", "kilos"],
    "ml": ["ml", "milliliter", "milliliters", "millilitre", "millilitres", "cc"],
    "l": ["l", "liter", "liters", "litre", "litres"],
    "mmol": ["mmol"],
    "mmhg": ["mmhg", "mm hg"],
    "dl": ["dl"],
    "iu": ["iu", "international units"],
    "unit": ["units", "unit", "u"],
    "meq": ["meq"],
    "%": ["%", "percent"],
    "bpm": ["bpm", "beats per minute"],
    "tablet": ["tablets", "tablet", "tabs", "tab", "pills", "pill"],
    "capsule": ["capsules", "capsule", "caps"],
    "puff": ["puffs", "puff"],
    "breath": ["breaths", "breath"],
    "cm": ["cm", "centimeters", "centimetres", "centimeter", "centimetre"],
    "mm": ["mm", "millimeters", "millimetres", "millimeter", "millimetre"],
    "drop": ["drops", "drop"],
    "tsp": ["tsp", "teaspoon", "teaspoons"],
    "tbsp": ["tbsp", "tablespoon", "tablespoons"],
    "sec": ["seconds", "second", "secs", "sec"],
    "min": ["minutes", "minute", "mins", "min"],
    "h": ["hours", "hour", "hrs", "hr", "h"],
    "day": ["days", "day"],
    "week": ["weeks", "week", "wks", "wk"],
    "month": ["months", "month"],
    "year": ["years", "year", "yrs", "yr"],
    "degc": ["°c", "º c", "° c", "degrees c", "degrees celsius", "celsius", "degc"],
    "degf": ["°f", "° f", "degrees f", "degrees fahrenheit", "fahrenheit", "degf"],
}
_ALIAS_TO_UNIT = {a: u for u, aliases in _UNIT_ALIASES.items() for a in aliases}
_ALIAS_RE = "|".join(re.escape(a) for a in sorted(_ALIAS_TO_UNIT, key=len, reverse=True))
_SIMPLE_UNIT = rf"(?:{_ALIAS_RE})"
_COMPOUND_UNIT = rf"{_SIMPLE_UNIT}(?:\s*(?:/|\bper\b)\s*{_SIMPLE_UNIT})*"

_WORD_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "half": 0.5,
}  # fmt: skip
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+|" + "|".join(_WORD_NUMBERS)
_RANGE_SEP = r"\s*(?:-|–|to)\s*"

_FREQ_WORDS = {"once": 1, "twice": 2, "thrice": 3}
_FREQUENCY = re.compile(
    rf"(?<![\w.])(?:(?P<w>once|twice|thrice)|(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?\s*(?:x|times?))"
    r"\s*(?:a|an|per|each|every|/)?\s*(?P<per>day|daily|d|week|weekly|wk|hour|hourly|h)\b",
    re.I,
)
# Latin dosing abbreviations: uppercase or dotted only, so the English word "bid" is not a dose.
_FREQ_ABBR = {"QD": 1, "BID": 2, "TID": 3, "QID": 4, "b.i.d": 2, "t.i.d": 3, "q.i.d": 4}
_FREQ_ABBR_RE = re.compile(r"\b(QD|BID|TID|QID|[bBtTqQ]\.[iI]\.[dD])\b\.?")
_QUANTITY = re.compile(
    rf"(?<![\w.])(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?\s*(?P<unit>{_COMPOUND_UNIT})(?![\w])",
    re.I,
)
_TEMP_LETTER = re.compile(rf"(?<![\w.])(?P<a>{_NUM})\s?(?P<unit>[CF])\b")


_NUMBER_TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def _to_float(s: str) -> float:
    s = s.lower()
    return float(_WORD_NUMBERS[s]) if s in _WORD_NUMBERS else float(s.replace(",", ""))


def _norm_unit(raw: str) -> str:
    parts = re.split(r"\s*(?:/|\bper\b)\s*", raw.lower())
    return "/".join(_ALIAS_TO_UNIT.get(re.sub(r"\s+", " ", p.strip()), p.strip()) for p in parts)


def extract_quantities(text: str) -> list[Quantity]:
    """Numbers with units and dosing frequencies, normalised, in text order.

    "50mg" and "50 mg" -> (50.0, "mg"); "2.5 mL/kg" -> (2.5, "ml/kg"); "38.5 °C" -> (38.5, "degc");
    "3 times a day" / "three times daily" / "TID" -> (3.0, "times/day"); "4-6 hours" -> (4, "h"), (6, "h").
    Units are normalised in spelling only (1 g stays (1.0, "g")); use `same_quantity` to compare
    across units. Bare numbers without a unit are ignored.
    """
    found: list[tuple[int, Quantity]] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    per_unit = {"daily": "day", "d": "day", "weekly": "week", "wk": "week", "hourly": "h", "hour": "h"}
    for m in _FREQUENCY.finditer(text):
        per = per_unit.get(m.group("per").lower(), m.group("per").lower())
        unit = f"times/{per}"
        if m.group("w"):
            vals = [float(_FREQ_WORDS[m.group("w").lower()])]
        else:
            vals = [_to_float(m.group("a"))] + ([_to_float(m.group("b"))] if m.group("b") else [])
        found += [(m.start(), Quantity(v, unit)) for v in vals]
        taken.append(m.span())
    for m in _FREQ_ABBR_RE.finditer(text):
        if free(*m.span()):
            found.append(
                (
                    m.start(),
                    Quantity(
                        float(_FREQ_ABBR[m.group(1).lower() if "." in m.group(1) else m.group(1)]),
                        "times/day",
                    ),
                )
            )
            taken.append(m.span())
    for m in _QUANTITY.finditer(text):
        if not free(*m.span()):
            continue
        unit = _norm_unit(m.group("unit"))
        found.append((m.start(), Quantity(_to_float(m.group("a")), unit)))
        if m.group("b"):
            found.append((m.start() + 1, Quantity(_to_float(m.group("b")), unit)))
        taken.append(m.span())
    for m in _TEMP_LETTER.finditer(text):  # "38.5C", "101 F": case-sensitive, so "5 c" is not Celsius
        if free(*m.span()):
            found.append((m.start(), Quantity(_to_float(m.group("a")), "deg" + m.group("unit").lower())))
            taken.append(m.span())
    return [q for _, q in sorted(found, key=lambda p: p[0])]


# factors to a base unit per dimension, so 1 g == 1000 mg and 1 l == 1000 ml
_SCALE = {"mcg": ("mass", 1e-3), "mg": ("mass", 1.0), "g": ("mass", 1e3), "kg": ("mass", 1e6),
          "ml": ("vol", 1.0), "l": ("vol", 1e3), "mm": ("length", 1.0), "cm": ("length", 10.0),
          "sec": ("time", 1 / 60), "min": ("time", 1.0), "h": ("time", 60.0),
          "day": ("time", 1440.0), "week": ("time", 10080.0)}  # fmt: skip


def dimension(unit: str) -> str:
    """What a unit measures: "mass" for mg/g/mcg/kg, "vol", "length", "time"; else the unit itself."""
    return _SCALE[unit][0] if unit in _SCALE else unit


def same_quantity(a: Quantity | tuple, b: Quantity | tuple, rel_tol: float = 0.01) -> bool:
    """Whether two quantities are equal up to `rel_tol`, converting g/mg/mcg, l/ml and min/h/day/week.
    Compound units ("mg/kg") must match in spelling after normalisation."""
    (va, ua), (vb, ub) = a, b
    if ua != ub:
        sa, sb = _SCALE.get(ua), _SCALE.get(ub)
        if not sa or not sb or sa[0] != sb[0]:
            return False
        va, vb = va * sa[1], vb * sb[1]
    return abs(va - vb) <= rel_tol * max(abs(va), abs(vb), 1e-12)


def quantities_agree(required: list[Quantity], text: str, rel_tol: float = 0.01) -> bool:
    """Whether `text` states every quantity in `required` ("5 mg" is not "50 mg"; "1 g" is "1000 mg").

    A quantity whose kind (`dimension`) `text` never states with a parsed unit may instead appear as
    the bare number, so notation we do not parse (2" for 2 inches) is not held against the text;
    "5 tablets of 50 mg" still fails "5 mg" because it states a mass and it is the wrong one."""
    found = extract_quantities(text)
    dims = {dimension(q.unit) for q in found}
    # section numbers like "1.1.1" or dates are not quantities: keep only tokens that parse
    numbers = {float(t.replace(",", "")) for t in tokenize(text) if _NUMBER_TOKEN.fullmatch(t)}
    for q in required:
        if any(same_quantity(q, f, rel_tol) for f in found):
            continue
        if dimension(q.unit) in dims or not any(
            abs(q.value - n) <= rel_tol * max(abs(n), 1e-12) for n in numbers
        ):
            return False
    return True
