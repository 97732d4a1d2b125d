"""The inquiry checklist of a case: one HistoryFact per history fact the doctor should elicit.

    from m3.clinic.checklist import derive_checklist, red_flags
    facts = derive_checklist(case)      # [HistoryFact('h1', 'chief_complaint', 'Double vision', 2), ...]
    red_flags("Reports coughing up blood and a 5 kg weight loss.")   # ['hemoptysis', 'weight loss']
    red_flags("Denies chest pain or syncope.")                       # [] (negated)

Order and ids (deterministic: the same case always gives the same list, ids "h1", "h2", ...):
  chief complaint (primary symptom) -> history of present illness, one fact per sentence ->
  secondary symptoms -> past medical history -> medications -> allergies -> social -> family ->
  review of systems -> other Patient_Actor fields. Sentences come from `m3.text.lexical.split_sentences`; a
  past-medical-history or medication line that is a bare comma list ("Hypertension, Ulcerative
  Colitis") gives one fact per item. Placeholders ("Information not provided.", "N/A", "No additional
  symptoms mentioned.") are dropped; duplicates (same folded text) are kept once.

Criticality (SCAN-bench marks about half of its checklist items critical):
  2 = chief complaint, every present-illness sentence, every secondary symptom, and any other fact
      that states a red flag (RED_FLAGS) without negating it;
  1 = everything else: past/social/family history, medications, allergies, ROS (negatives included:
      "Denies chest pain" is worth asking, but it is not a critical finding).
Fever alone is no red flag; fever with a FEVER_COMPANIONS word in the same sentence (rash, stiff neck,
confusion, rigors, petechiae, ...) is. On the 107 AgentClinic MedQA cases: 12.2 facts per case, 62%
critical (SCAN-bench: about 29 items, 51% critical; its cases are richer, the ratio is close).

Negation: a red flag is negated when "no", "not", "denies", "without", "negative for", "never" or
"none" precedes it in the same sentence with no contrast word ("but", "however", "although",
"except", "reports", "endorses", "admits") in between; so "denies chest pain, palpitations or
dyspnea" negates all three, unlike a comma-bounded window.

Limits: English keyword lists; a red flag described in other words ("felt the room go black") is
missed; one sentence holding two facts stays one fact.
"""

from __future__ import annotations

import re

from m3.clinic.cases import ClinicalCase, HistoryFact
from m3.text.lexical import split_sentences
from m3.text.normalize import fold

# name -> regex on `fold`ed text (lowercase ASCII, punctuation -> space, American spelling).
RED_FLAGS: dict[str, str] = {
    "chest pain": r"chest (pain|pressure|tightness)",
    "syncope": r"syncop\w*|faint\w*|passed out|passing out|loss of consciousness|blackout\w*",
    "hemoptysis": r"hemoptysis|cough\w* (up )?blood",
    "hematemesis": r"hematemesis|vomit\w* blood|coffee ground",
    "gastrointestinal bleeding": (
        r"melena|black (tarry )?stool\w*|blood\w* (in )?(the )?stool\w*|rectal bleed\w*|hematochezia"
    ),
    "hematuria": r"hematuria|blood in (the |his |her )?urine",
    "bleeding": r"bleed\w*|hemorrhag\w*",
    "weight loss": r"weight loss|los(t|ing) (\w+ )?weight|lost \d+ ?(kg|lb|pounds)",
    "night sweats": r"night sweats?",
    "neurological deficit": (
        r"weakness|numbness|paralys[ie]s|hemipares[ie]s|slurred speech|dysarthria|aphasia|facial droop"
        r"|vision loss|loss of vision|blurred vision|diplopia|double vision|ataxia|difficulty walking"
        r"|seizures?|convulsion\w*|confus\w*|altered mental|disorient\w*|ptosis"
    ),
    "severe headache": r"worst headache|thunderclap|sudden\w* (severe )?headache|severe headache",
    "shortness of breath": r"shortness of breath|dyspnea|difficulty breathing|breathless\w*|stridor|apnea",
    "suicidality": r"suicid\w*|self harm|kill (him|her|my|them)sel(f|ves)|homicid\w*",
    "pregnancy": r"pregnan\w*|missed (menstrual )?period",
    "immunosuppression": r"immunosuppress\w*|immunocompromis\w*|\bhiv\b|chemotherapy|transplant\w*|natalizumab",
    "anticoagulation": r"anticoagul\w*|warfarin|heparin|apixaban|rivaroxaban",
    "cancer history": r"cancer|malignan\w*|carcinoma|lymphoma|leukemia|metasta\w*",
    "acute abdomen": r"severe abdominal pain|rigid abdomen|rebound tenderness",
    "cauda equina": r"saddle an?esthesia|urinary retention|(bowel|bladder|fecal|urinary) incontinence",
    "anaphylaxis": r"anaphyla\w*|swelling of (the )?(face|lips|tongue|throat)|throat swelling",
    "jaundice": r"jaundice\w*|yellow\w* (of )?(the |his |her )?(skin|eyes)",
    "testicular pain": r"(testicular|scrotal) pain",
    "neck stiffness": r"stiff neck|neck stiffness|nuchal rigidity",
    "infant danger signs": r"poor feeding|letharg\w*|bilious vomit\w*|inconsolabl\w*|not feeding",
}
# Fever alone is common; fever together with one of these in the same fact is a red flag.
FEVER_COMPANIONS = (
    r"rash|stiff neck|neck stiffness|confus\w*|rigors?|petechia\w*|neutropeni\w*|seizures?|letharg\w*"
)

_COMPILED = {name: re.compile(rf"\b(?:{rx})\b") for name, rx in RED_FLAGS.items()}
_FEVER = re.compile(r"\b(fever\w*|febrile|pyrexia)\b")
_FEVER_COMPANIONS = re.compile(rf"\b(?:{FEVER_COMPANIONS})\b")
_NEGATION = re.compile(r"\b(no|not|denie[sd]|deny|denying|without|negative for|never|none|nor)\b")
_CONTRAST = re.compile(r"\b(but|however|although|though|except|reports?|endorses?|admits?|notes?|yet)\b")
_PLACEHOLDER = re.compile(
    r"^(n/?a\b.*|none reported\.?)$"
    r"|\b(not|no)\b.*\b(provided|specified|available|applicable|mentioned|documented)\b"
    r"|\bno (additional|other|further)\b.*\b(reported|noted|symptoms?)\b",
    re.I,
)
_LIST_ITEM_MAX_WORDS = 5


def _is_negated(sentence: str, start: int) -> bool:
    before = sentence[:start]
    cues = list(_NEGATION.finditer(before))
    return bool(cues) and not _CONTRAST.search(before[cues[-1].end() :])


def red_flags(text: str) -> list[str]:
    """Names of the red flags `text` states without negating them, in RED_FLAGS order."""
    found: list[str] = []
    for sentence in split_sentences(text) or [text]:
        s = fold(sentence)
        for name, rx in _COMPILED.items():
            if name not in found and any(not _is_negated(s, m.start()) for m in rx.finditer(s)):
                found.append(name)
        fever = [m for m in _FEVER.finditer(s) if not _is_negated(s, m.start())]
        companion = [m for m in _FEVER_COMPANIONS.finditer(s) if not _is_negated(s, m.start())]
        if fever and companion and "fever with danger signs" not in found:
            found.append("fever with danger signs")
    return found


def is_placeholder(text: str) -> bool:
    """True for filler that states no fact: "Information not provided.", "N/A", "No additional
    symptoms mentioned." (but not "No significant past medical history.", a pertinent negative)."""
    return bool(_PLACEHOLDER.search(text.strip()))


def split_facts(text: str, as_list: bool = False) -> list[str]:
    """Sentence-level facts of a free-text field, placeholders dropped. `as_list=True` also splits a
    bare comma list of short items ("Hypertension, Ulcerative Colitis") into its items."""
    out: list[str] = []
    for sentence in split_sentences(text):
        if is_placeholder(sentence):
            continue
        parts = [p.strip(" .") for p in re.split(r",|;|\band\b", sentence)] if as_list else []
        if (
            as_list
            and len(parts) > 1
            and all(0 < len(p.split()) <= _LIST_ITEM_MAX_WORDS for p in parts)
            and not _NEGATION.search(fold(sentence))
        ):
            out.extend(parts)
        else:
            out.append(sentence.strip())
    return out


def derive_checklist(case: ClinicalCase) -> list[HistoryFact]:
    """The inquiry checklist of `case` (see the module docstring for order, ids and criticality).
    Pure: reads the case's history fields only; `case.history` itself is ignored."""
    items: list[tuple[str, str, bool]] = []  # (category, text, always critical)
    if case.chief_complaint.strip() and not is_placeholder(case.chief_complaint):
        items.append(("chief_complaint", case.chief_complaint.strip(), True))
    items += [("hpi", s, True) for s in split_facts(case.history_present_illness)]
    items += [
        ("symptom", s.strip(), True) for s in case.secondary_symptoms if s.strip() and not is_placeholder(s)
    ]
    items += [("past_medical", s, False) for s in split_facts(case.past_medical_history, as_list=True)]
    for med in case.medications:
        items += [("medication", s, False) for s in split_facts(med, as_list=True)]
    for allergy in case.allergies:
        items += [("allergy", s, False) for s in split_facts(allergy)]
    items += [("social", s, False) for s in split_facts(case.social_history)]
    items += [("family", s, False) for s in split_facts(case.family_history)]
    items += [("ros", s, False) for s in split_facts(case.review_of_systems)]
    for key, text in case.other_history.items():
        items += [
            ("other", f"{key}: {s}" if not s.lower().startswith(key.lower()) else s, False)
            for s in split_facts(text)
        ]

    facts: list[HistoryFact] = []
    seen: set[str] = set()
    for category, text, critical in items:
        key = fold(text)
        if not key or key in seen:
            continue
        seen.add(key)
        crit = 2 if critical or red_flags(text) else 1
        facts.append(HistoryFact(f"h{len(facts) + 1}", category, text, crit))
    return facts
