"""Comparison keys for clinical strings: case, accents, punctuation and British spelling folded away.

    from m3.text.normalize import fold, tokens
    fold("Hirschsprung’s disease")          # 'hirschsprung disease'
    fold("Haemophilia (factor VIII)")       # 'hemophilia factor viii'
    tokens("Blood_Cultures / Findings")     # ['blood', 'culture', 'finding']

Used by the ICD-10 matcher (`m3.clinic.icd10`), the test catalogue matcher (`m3.clinic.labs`) and
the checklist red-flag scan. Every output is a comparison key, never display text: the same folding is
applied to both sides of a comparison, so odd keys ("raised" -> "raized") are harmless.

Limits: English only; the British -> American rules cover the medical stems seen in WHO ICD-10 titles
(haem-, oesoph-, -aemia, tumour, paed-, ...), not English spelling in general.
"""

from __future__ import annotations

import re
import unicodedata

# WHO ICD-10 is written in British English, AgentClinic in American English: fold both to American.
_SPELLING = [
    (re.compile(r"aem"), "em"),  # haem-, anaemia, leukaemia, ischaemia, septicaemia
    (re.compile(r"aest"), "est"),  # anaesthesia
    (re.compile(r"\boe(?=[sdt])"), "e"),  # oesophagus, oedema, oestrogen
    (re.compile(r"rrhoe"), "rrhe"),  # diarrhoea, amenorrhoea, seborrhoeic
    (re.compile(r"pnoe"), "pne"),  # dyspnoea, apnoea
    (re.compile(r"foet"), "fet"),
    (re.compile(r"coel"), "cel"),  # coeliac
    (re.compile(r"paed"), "ped"),  # paediatric, orthopaedic
    (re.compile(r"gynaec"), "gynec"),
    (re.compile(r"caec"), "cec"),  # caecum
    (re.compile(r"sulph"), "sulf"),
    (re.compile(r"\b(tum|col|behavi|hum|lab)our\b"), r"\1or"),
    (re.compile(r"(?<=[a-z]{3})is(ed|ation|ing)\b"), r"iz\1"),  # localised -> localized
]
_PAREN = re.compile(r"\([^()]*\)")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_POSSESSIVE = re.compile(r"(?<=[a-z])'s\b")


def ascii_fold(text: str) -> str:
    """Lowercase ASCII: accents stripped ("Calvé" -> "calve"), curly quotes made straight."""
    text = text.replace("’", "'").replace("‘", "'").replace("–", "-").replace("—", "-")
    text = unicodedata.normalize("NFKD", text)
    return text.encode("ascii", "ignore").decode("ascii").lower()


def fold(text: str, drop_parentheses: bool = False) -> str:
    """The comparison key of `text`: ASCII lowercase, American spelling, no possessive 's, every run of
    punctuation/space replaced by one space. `drop_parentheses` removes "(...)" groups first, which
    strips abbreviations such as "(PML)" and qualifiers such as "(chronic)"."""
    t = ascii_fold(text)
    if drop_parentheses:
        t = _PAREN.sub(" ", t)
    t = _POSSESSIVE.sub("", t)
    t = _NON_WORD.sub(" ", t)
    for pattern, repl in _SPELLING:
        t = pattern.sub(repl, t)
    return " ".join(t.split())


def stem_token(tok: str) -> str:
    """Plural folding only ("cultures" -> "culture", "antibodies" -> "antibody"); words ending in -ss,
    -us, -is keep their s ("analysis", "virus") and short words stay as they are."""
    if len(tok) <= 3 or not tok.isalpha():
        return tok
    if tok.endswith("ies") and len(tok) >= 5:
        return tok[:-3] + "y"
    if tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def tokens(text: str, drop_parentheses: bool = False) -> list[str]:
    """`fold(text)` split into plural-folded tokens, in order (underscores split words too)."""
    return [stem_token(t) for t in fold(text.replace("_", " "), drop_parentheses).split()]
