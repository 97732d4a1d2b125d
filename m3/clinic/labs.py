"""Test results of a case: flatten, file each under the 38-category catalogue, mark essential ones.

    from m3.clinic.labs import categorize_test, essential_reason, derive_tests
    categorize_test("Imaging / Chest_CT / Findings")                      # 'ct_chest'
    categorize_test("Urinalysis / WBC")                                   # 'urinalysis' (not 'cbc')
    essential_reason("Blood_Tests / Acetylcholine_Receptor_Antibodies", "Present (elevated)")
                                                                          # (True, "flag 'present'")
    derive_tests({"Imaging": {"Chest_CT": {"Findings": "Normal, no thymoma."}}}, "Myasthenia gravis")
        # [TestResult(category='ct_chest', name='Imaging / Chest CT / Findings', value='Normal, no thymoma.', essential=False)]

Categorisation (`categorize_test`), lexical and deterministic:
  1. The name is split on "/" into components, root first. Each component is matched against the
     catalogue keywords (see `m3.clinic.catalogue` for the phrase semantics). The first component,
     from the root down, with a keyword match decides: the panel name ("Urinalysis", "Lumbar_Puncture")
     is more reliable than the analyte under it ("WBC", "Glucose"). Generic containers ("Blood_Tests",
     "Laboratory_Studies") match nothing and are skipped.
  2. No normal keyword anywhere -> the first component with a weak keyword ("Imaging", "MRI").
  3. Still nothing -> the value text is scanned with the normal keywords of 3+ letters
     ("Other_Findings: Blood smear shows ..." -> cbc).
  4. Still nothing and `semantic=True` -> MiniLM similarity (`m3.text.embeddings`) between the name and every
     category title and keyword phrase (4+ characters); the category of the nearest phrase wins if its
     cosine >= SEMANTIC_THRESHOLD, else "other". Deterministic for a given model; off by default.

Essential vs optional (`essential_reason`), first rule that fires:
  1. unavailable: the value starts with "pending", "not specified/performed/indicated/available",
     "optional", "can be considered", "expected to" -> optional (nothing to find);
  2. confirmatory: the value names the diagnosis (all its content words, or its abbreviation in
     parentheses, e.g. "PML") -> essential;
  3. flagged: a non-negated abnormal marker (ABNORMAL_MARKERS: elevated, decreased, positive,
     present, shows, reveals, consistent with, mass, lesion, dilated, "4+", ...) -> essential;
     a marker is negated when "no", "not", "without", "negative", "free of", "denies", "ruling out",
     "none", "nor" or "non" precedes it in the same sentence with no "but"/"however"/"although" in
     between ("Normal, no thymoma or other masses detected" is not flagged);
  4. numeric: the first number is outside the reference range (`m3.clinic.ranges`) -> essential;
  5. otherwise ("normal", "negative", "unremarkable", in-range numbers, plain descriptions) -> optional.

Limits: English patterns only; a number with no flag and no known range counts as optional, and
adult ranges judge children and newborns; a marker in a hypothetical ("may show") still flags;
"Serology / Anti-PGL-1" (leprosy) files under autoantibodies because the panel name wins; the
confirmatory rule only sees the value text, not which test is the gold standard for the diagnosis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from m3.clinic.catalogue import CATALOGUE, OTHER, TestCategory
from m3.clinic.ranges import out_of_range
from m3.text.normalize import fold, tokens

# Cosine to the nearest catalogue phrase. At 0.6 "Spirometric testing" -> pft (0.84) and "Head computed
# tomography" -> ct_head (0.77) pass while "Audiometry" (0.45) and "Tilt table test" (0.35) stay "other".
SEMANTIC_THRESHOLD = 0.6


@dataclass(frozen=True)
class TestResult:
    """One reported result: catalogue `category`, `name` (path in the source, " / "-joined), `value`."""

    __test__ = False  # not a pytest class, despite the name

    category: str
    name: str
    value: str
    essential: bool


# --- categorisation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Keyword:
    category: str
    words: frozenset[str]
    order: int  # catalogue position: breaks ties between equally long matches


def _keywords(cat: TestCategory, order: int, weak: bool) -> list[_Keyword]:
    return [_Keyword(cat.id, frozenset(tokens(k)), order) for k in (cat.weak if weak else cat.keywords)]


_STRONG = [k for i, c in enumerate(CATALOGUE) for k in _keywords(c, i, weak=False)]
_WEAK = [k for i, c in enumerate(CATALOGUE) for k in _keywords(c, i, weak=True)]
_VALUE_KEYWORDS = [k for k in _STRONG if all(len(w) >= 3 for w in k.words)]


def _best(words: set[str], keywords: list[_Keyword]) -> str | None:
    """Category of the longest keyword contained in `words`; the earlier category on a tie."""
    hits = [k for k in keywords if k.words <= words]
    if not hits:
        return None
    return min(hits, key=lambda k: (-len(k.words), k.order)).category


def name_components(name: str) -> list[str]:
    """ "Imaging / Chest_CT / Findings" -> ['Imaging', 'Chest_CT', 'Findings'] (empty parts dropped)."""
    return [p.strip() for p in name.split("/") if p.strip()]


def categorize_test(name: str, value_text: str = "", *, semantic: bool = False) -> str:
    """Catalogue id for a test called `name` (components separated by "/"), or "other".
    `value_text` is only consulted when the name alone matches nothing (rule 3 above)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"test name must be a non-empty string, got {name!r}")
    parts = [set(tokens(p)) for p in name_components(name)]
    for keywords in (_STRONG, _WEAK):
        for words in parts:
            found = _best(words, keywords)
            if found is not None:
                return found
    if value_text:
        found = _best(set(tokens(value_text)), _VALUE_KEYWORDS)
        if found is not None:
            return found
    if semantic:
        return _semantic_category(" ".join(fold(p) for p in name_components(name)))
    return OTHER


@lru_cache(maxsize=1)
def _phrase_vectors() -> tuple[np.ndarray, tuple[str, ...]]:
    """(unit vectors, owning category id) for every title and keyword phrase of 4+ characters; short
    abbreviations ("k", "na", "pt") embed as noise and are left out."""
    from m3.text.embeddings import embed  # imported here: loading the model costs seconds

    pairs = [(p, c.id) for c in CATALOGUE for p in (c.title, *c.keywords) if len(p) >= 4]
    return embed([p for p, _ in pairs]), tuple(cid for _, cid in pairs)


def _semantic_category(text: str) -> str:
    from m3.text.embeddings import embed

    vectors, owners = _phrase_vectors()
    sims = vectors @ embed([text])[0]
    best = int(np.argmax(sims))  # argmax takes the first maximum: deterministic on ties
    return owners[best] if float(sims[best]) >= SEMANTIC_THRESHOLD else OTHER


# --- essential vs optional -----------------------------------------------------------------------

_UNAVAILABLE = re.compile(
    r"^\s*(pending|not (specified|performed|done|available|indicated|obtained|applicable|assessed|provided"
    r"|mentioned)"
    r"|optional|can be considered|expected to|to be determined|n/?a\b)",
    re.I,
)
# Words that report a finding: regex fragments matched at word starts on `fold`ed text, so "elevat"
# covers elevated/elevation; multi-word entries are phrases; r"low\b" keeps "lower end" out.
ABNORMAL_MARKERS = (
    "elevat", "increas", "rai[sz]ed", r"high\b", "decreas", "reduc", r"low\b", "diminish", "depress",
    "positive", "present", "presence", "detected", "abnormal", "prolong", "marked", "show", "reveal",
    "demonstrat", "evidence of", "consistent with", "compatible with", "suggest",
    "indicat", "confirm", "diagnostic of", "characteristic", "mass", "lesion", "tumor", "nodule", "cyst",
    "effusion", "infiltrat", "opacit", "consolidation", "dilat", "enlarg", "thicken", "atroph",
    "fractur", "dislocat", "stenosis", "narrow", "occlu", "obstruct", "perforat", "hemorrhag", "bleed",
    "reflux", "ulcer", "inflam", "edema", "swelling", "mutation", "growth", "numerous", "cloudy", "turbid",
    "reddish", "bloody", "spike", "sharp wave", "epileptiform", "patent", "cataract", "loss", "deficien",
    "absence of", "absent", "lytic", "free air", "mediastinal air", "thrombocytosis", "leukocytosis",
    "lymphocytosis",
    "anemia", "organism", "diplococci", "rods", "cocci", "bacilli", "atypical", "immature", "blast",
    "monoclonal", "acantholysis", "deposition", "smudge", "hypotension", "dysfunction", "fragmentation",
    "flattening", "transition zone", "cavity", "syrinx", "lymphadenopathy", "adenopathy", "hyperattenuat",
    "hyperchromic", "macule", "papule", "plaque", "granulom", "densit", "ground glass", r"reticular\b",
    "carcinoma", "adenocarcinoma", "malignan", "neoplas", "lymphoma",
)  # fmt: skip
_MARKER_RE = re.compile(r"\b(" + "|".join(ABNORMAL_MARKERS) + r"|\d+ plusgrade)", re.I)
# A marker after one of these in the same sentence is a pertinent negative ("no masses", "negative for
# bacterial growth"), unless a contrast word comes between them.
_NEGATION_RE = re.compile(
    r"\b(no|not|without|negative|free of|denie[sd]|rul(?:ing|ed) out|none|nor|non)\b", re.I
)
_CONTRAST_RE = re.compile(r"\b(but|however|although|though|except|yet)\b", re.I)
_SENTENCE_RE = re.compile(r"(?<=[.;!?])\s+")


def _flag(value: str) -> str | None:
    """The first abnormal marker in `value` that no negation governs, or None."""
    for sentence in _SENTENCE_RE.split(value):
        # fold() drops "+", so protect "4+" (urine protein) first; "Gram-negative diplococci" is a
        # positive finding, not a negation
        s = fold(re.sub(r"(\d)\s*\+", r"\1 plusgrade", sentence))
        s = re.sub(r"\bgram (negative|positive)\b", "gram stained", s)
        s = re.sub(r"\brh (negative|positive)\b", "rh typed", s)  # a blood group, not a finding
        for m in _MARKER_RE.finditer(s):
            before = s[: m.start()]
            neg = list(_NEGATION_RE.finditer(before))
            if neg and not _CONTRAST_RE.search(before[neg[-1].end() :]):
                continue
            return m.group(0).replace(" plusgrade", "+").strip()
    return None


def _diagnosis_named(value: str, diagnosis: str) -> bool:
    words = {
        w for w in tokens(diagnosis, drop_parentheses=True) if len(w) > 2 and w not in ("disease", "the")
    }
    value_words = set(tokens(value))
    abbrevs = {a.lower() for a in re.findall(r"\(([A-Za-z]{2,6})\)", diagnosis)}
    return (bool(words) and words <= value_words) or bool(abbrevs & value_words)


_GENERIC_LEAVES = frozenset({"level", "result", "value", "finding", "random", "interpretation", "comment"})


def analyte_component(name: str) -> str:
    """The most specific part of a test name, skipping generic leaves: "Blood_Glucose / Level" ->
    "Blood_Glucose", "Complete_Blood_Count / WBC" -> "WBC"."""
    parts = name_components(name)
    for p in reversed(parts):
        if not set(tokens(p)) <= _GENERIC_LEAVES:
            return p
    return parts[-1] if parts else name


def essential_reason(
    name: str, value: str, diagnosis: str | None = None, category: str | None = None
) -> tuple[bool, str]:
    """(essential, why) for one result; see the module docstring for the rules and their order.
    `category` defaults to `categorize_test(name, value)`; it selects the reference ranges."""
    if _UNAVAILABLE.search(value):
        return False, "unavailable"
    if diagnosis and _diagnosis_named(value, diagnosis):
        return True, "names the diagnosis"
    flag = _flag(value)
    if flag is not None:
        return True, f"flag {flag!r}"
    cat = category if category is not None else categorize_test(name, value)
    numeric = out_of_range(analyte_component(name), value, cat)
    if numeric is not None:
        return numeric[0], numeric[1]
    return False, "no abnormal marker"


def is_essential(name: str, value: str, diagnosis: str | None = None, category: str | None = None) -> bool:
    """True when the result is abnormal/positive or confirms `diagnosis` (see `essential_reason`)."""
    return essential_reason(name, value, diagnosis, category)[0]


# --- flattening ----------------------------------------------------------------------------------


def humanize(key: str) -> str:
    """ "Chest_CT" -> "Chest CT": underscores become spaces, nothing else changes."""
    return " ".join(key.replace("_", " ").split())


def leaf_text(value: object) -> str:
    """A leaf of the AgentClinic JSON as text: lists joined by "; ", booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "; ".join(leaf_text(v) for v in value)
    return str(value).strip()


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Nested dict -> [(path of humanized keys, leaf text)], in document order."""
    out: list[tuple[tuple[str, ...], str]] = []
    for key, value in tree.items():
        path = (*prefix, humanize(str(key)))
        if isinstance(value, dict):
            out.extend(flatten(value, path))
        else:
            out.append((path, leaf_text(value)))
    return out


def derive_tests(
    test_results: dict, diagnosis: str | None = None, *, semantic: bool = False
) -> list[TestResult]:
    """One TestResult per leaf of an AgentClinic `Test_Results` tree, in document order."""
    out = []
    for path, value in flatten(test_results):
        name = " / ".join(path)
        cat = categorize_test(name, value, semantic=semantic)
        out.append(TestResult(cat, name, value, is_essential(name, value, diagnosis, cat)))
    return out
