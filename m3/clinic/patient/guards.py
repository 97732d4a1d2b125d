"""The patient simulator's guards: the factual check of a reply and the termination gate.

    from m3.clinic.patient.guards import check_reply, diagnosis_terms, termination_gate
    check_reply(case, "I have double vision.", ["h1"])              # [] (fine)
    check_reply(case, "Could it be myasthenia gravis?", [])         # ['diagnosis_leak: ...']
    check_reply(case, "My labs showed high antibodies.", [])        # ['test_result: ...']
    check_reply(case, "I smoke a pack a day.", ["h8"])              # ['contradiction: h8 ...']
    termination_gate("You have myasthenia gravis.", case)         # 'diagnosis'

`check_reply` problems, each a string "<kind>: <detail>":
  * diagnosis_leak: a distinctive word of the diagnosis or its ICD-10 title ("myasthenia", "pml";
    not common words such as "disease", "acute", nor words the case history itself uses, which the
    patient knows), or the whole diagnosis phrase;
  * test_result / exam_finding: a value of the case's results (a number with a unit, a long
    distinctive word such as "thymoma") or talk of results ("my scan showed ...");
  * volunteered: the reply carries content words of a case fact that is not in fact_ids and was not
    in the question (the persona's own words and the disclosed facts' words do not count);
  * contradiction: a reply sentence negates a word its best-matching case fact affirms, or the reverse;
  * unknown_fact_id: fact_ids names a fact the case does not have.

`termination_gate(question, case)`: "diagnosis" when a statement (not a question) of the doctor tells
the patient a diagnosis ("You have X.", "I think this is X.", "The most likely diagnosis is X."), where
X must look like a disease (a disease word or suffix, the case's own diagnosis words, or an ICD-10
title match), so "You have been very helpful." does not end it; "goodbye" on a farewell or an
explicit end of the consultation; else None.
Limits: lexical, so a paraphrase with no shared word ("my eyes see two of everything") escapes the
volunteering and contradiction checks, and a leak in other words ("a problem where nerves and
muscles don't talk") escapes the leak check; it is a guard against the common failures, not a proof.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from m3.clinic.icd10 import STOP_WORDS as ICD_STOP_WORDS
from m3.clinic.patient.persona import PERSONA_VOCAB
from m3.clinic.patient.retrieval import same_word
from m3.text.lexical import (
    STOPWORDS,
    extract_quantities,
    is_negated,
    keywords,
    same_quantity,
    split_sentences,
)
from m3.text.normalize import fold, tokens

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase

# Diagnosis words too common to betray a diagnosis ("Acute interstitial nephritis" -> "interstitial",
# "nephritis" are distinctive; "acute" is not).
GENERIC_DIAGNOSIS_WORDS = frozenset(
    """disease diseases disorder disorders syndrome syndromes infection infectious acute chronic subacute type left
    right upper lower point insertion active physiological impaired production normal behavior behaviour complex
    partial essential double multiple system cell cells large small diffuse bed site state status condition
    neonatal newborn reactive progressive posterior anterior general generalized severe mild simple stage grade
    injury failure deficiency rupture congenital hereditary unspecified classified elsewhere""".split()
)
# Words of result values that say nothing specific ("Elevated", "Within normal limits").
GENERIC_RESULT_WORDS = frozenset(
    """elevated decreased increased normal abnormal negative positive present absent within limits range finding
    findings consistent noted observed detected significant unremarkable appropriate bilateral bilaterally slightly
    moderate moderately markedly mildly severe several without evidence suggestive indicating indicative showing
    revealed reveals visible regular irregular performed pending available applicable multiple general generally
    result results another between because however although approximately specific associated surrounding possible
    possibly minimal overall including typical characteristic presence reported history symptom symptoms patient
    examination examined assessment comments optional considered clinical suspicion persists initial mandatory
    diagnosis simulated""".split()
)
_RESULT_TALK = re.compile(
    r"\b(tests?|results?|labs?|blood ?work|scans?|x-?rays?|mri|ct|ultrasound|biops(y|ies)|ecg|ekg|cultures?|imaging)\b"
    r"[^.?!]{0,40}\b(show\w*|came back|reveal\w*|found|were|was|is|are)\b[^.?!]{0,30}"
    r"\b(positive|negative|normal|abnormal|elevated|high|low|raised|decreased|increased|consistent)\b",
    re.I,
)
# Fact words that say nothing the doctor asked for on their own ("No significant past medical history").
_WEAK_WORDS = frozenset(
    keywords("history past medical significant recent symptoms other known reported previous prior any none")
)


def token_matches(token: str, word: str) -> bool:
    """`token` is `word` or a close form of it ("myasthenic" ~ "myasthenia"; long words only)."""
    if token == word:
        return True
    n = len(word) - 2
    return len(word) >= 7 and len(token) >= n and token[:n] == word[:n]


def _known_tokens(case: ClinicalCase) -> set[str]:
    """Every (folded) word the patient may say: the history, chief complaint and demographics."""
    texts = [f.text for f in case.history] + [case.chief_complaint, case.demographics.text]
    return {t for text in texts for t in tokens(text)}


def diagnosis_terms(case: ClinicalCase, exclude_known: bool = True) -> tuple[set[str], list[str]]:
    """(distinctive folded words, folded phrases) of the diagnosis and its ICD-10 title. With
    `exclude_known`, words and phrases the case history itself uses are left out (the patient knows them)."""
    dx = case.diagnosis
    sources = [dx.text] + ([dx.icd10_title] if dx.icd10_title else [])
    words = {
        w
        for text in sources
        for w in tokens(text)
        if len(w) >= 3 and w.isalpha() and w not in STOPWORDS and w not in ICD_STOP_WORDS
        and w not in GENERIC_DIAGNOSIS_WORDS
    }  # fmt: skip
    phrases = [p for p in dict.fromkeys(fold(t, drop_parentheses=True) for t in sources) if p]
    if exclude_known:
        known = _known_tokens(case)
        history = " " + " ".join(fold(f.text) for f in case.history) + " "
        words = {w for w in words if not any(token_matches(k, w) for k in known)}
        phrases = [p for p in phrases if f" {p} " not in history]
    return words, phrases


def _result_evidence(case: ClinicalCase) -> tuple[set[str], list]:
    """(distinctive words, quantities) of the case's exam findings and test results that the
    history does not state (so the patient cannot know them)."""
    values = [t.value for t in case.test_results] + [f.value for f in case.exam_findings]
    known = _known_tokens(case)
    words = {
        w
        for v in values
        for w in tokens(v)
        if len(w) >= 7 and w.isalpha() and w not in GENERIC_RESULT_WORDS and w not in STOPWORDS
        and not any(token_matches(k, w) for k in known)
    }  # fmt: skip
    history_q = [q for f in case.history for q in extract_quantities(f.text)]
    quantities = [
        q for v in values for q in extract_quantities(v) if not any(same_quantity(q, h) for h in history_q)
    ]
    return words, quantities


def check_reply(case: ClinicalCase, reply_text: str, fact_ids: list[str], *, question: str = "") -> list[str]:
    """Problems of a patient reply against the case profile ([] = fine); see the module docstring.
    `question` (the doctor's) lets words the doctor used not count as volunteered."""
    problems: list[str] = []
    by_id = {f.id: f for f in case.history}
    problems += [f"unknown_fact_id: {fid}" for fid in fact_ids if fid not in by_id]
    reply_tokens = tokens(reply_text)
    folded = f" {fold(reply_text, drop_parentheses=False)} "

    words, phrases = diagnosis_terms(case)
    leaked = sorted({w for w in words if any(token_matches(t, w) for t in reply_tokens)})
    leaked += [p for p in phrases if f" {p} " in folded and p not in leaked]
    if leaked:
        problems.append(f"diagnosis_leak: names {', '.join(repr(w) for w in leaked)}")

    result_words, result_qs = _result_evidence(case)
    hits = sorted({w for w in result_words if any(token_matches(t, w) for t in reply_tokens)})
    hits += [
        f"{q.value:g} {q.unit}"
        for q in extract_quantities(reply_text)
        if any(same_quantity(q, r) for r in result_qs)
    ]
    if hits:
        problems.append(
            f"exam_finding: states {', '.join(hits)} (the patient cannot know exam or test results)"
        )
    disclosed = [by_id[fid] for fid in fact_ids if fid in by_id]
    talk = _RESULT_TALK.search(reply_text)
    if talk and not any(_RESULT_TALK.search(f.text) for f in disclosed):  # unless a disclosed fact says so
        problems.append(f"test_result: reports results ({talk.group(0)!r})")

    allowed = set(PERSONA_VOCAB) | set(keywords(question)) | set(keywords(case.demographics.text))
    allowed |= {k for f in disclosed for k in keywords(f.text)}
    extra = {w for w in keywords(reply_text) if not any(same_word(w, a) for a in allowed)} - _WEAK_WORDS
    for fact in case.history:
        if fact.id in fact_ids:
            continue
        fact_words = set(keywords(fact.text)) - _WEAK_WORDS
        said = {w for w in fact_words if any(same_word(w, e) for e in extra)}
        if fact_words and len(said) >= min(2, len(fact_words)):
            problems.append(f"volunteered: {fact.id} ({', '.join(sorted(said))}) was not asked about")

    problems += _contradictions(case, reply_text, fact_ids, question)
    return problems


def _negation_text(text: str) -> str:
    """Spell prefix negation as a word ("non-smoker" -> "not smoker") so `is_negated` sees it."""
    return re.sub(r"\bnon[- ](?=[a-z])", "not ", text, flags=re.I)


def _contradictions(case: ClinicalCase, reply_text: str, fact_ids: list[str], question: str) -> list[str]:
    out = []
    asked = keywords(question)
    fact_words = [(f, keywords(f.text)) for f in case.history]
    for sentence in split_sentences(reply_text):
        s_words = [w for w in keywords(sentence) if w not in PERSONA_VOCAB]  # "test me" is no claim

        def shared(fw: list[str], s_words: list[str] = s_words) -> list[tuple[str, str]]:
            return [(s, f) for s in s_words for f in fw if same_word(s, f)]

        # the fact this sentence is about: most shared words; ties -> a disclosed fact, then the fact
        # the sentence covers best, then checklist order
        ranked = sorted(
            fact_words,
            key=lambda p: (
                -len(shared(p[1])),
                p[0].id not in fact_ids,
                -len(shared(p[1])) / max(len(p[1]), 1),
            ),
        )
        if not ranked:
            continue
        fact, fw = ranked[0]
        pairs = shared(fw)
        # one shared word is enough when the reply says the fact is its source, or the doctor asked
        # about that word ("Do you smoke?" - "I smoke a pack a day" vs "Non-smoker"); else two
        one_is_enough = (
            fact.id in fact_ids or len(fw) == 1 or any(same_word(s, a) for s, _ in pairs for a in asked)
        )
        if not pairs or (len(pairs) < 2 and not one_is_enough):
            continue
        for s_word, f_word in pairs:
            # forward scope only ("no X", "denies X"): the rewrite moves predicate cues ("X and I do not")
            said = is_negated(_negation_text(sentence), [s_word], window=8, back=0)
            if said != is_negated(_negation_text(fact.text), [f_word], window=8, back=0):
                out.append(f"contradiction: {fact.id} says {fact.text!r}; the reply says {sentence!r}")
                break
    return out


# --- termination gate ----------------------------------------------------------------------------

_GOODBYE = re.compile(
    r"\b(good ?bye|bye|farewell|take care(?! of)|see you (later|soon|next time|again)"
    r"|that'?s (all|everything) (for today|the questions i have|i need)|we'?re (all )?done"
    r"|(end|conclude|finish|close)(ing)? (the|this|our) (consultation|visit|interview|appointment))\b",
    re.I,
)
_DX_EXPLICIT = re.compile(
    r"\b(the|my|your|final|working|likely|probable) diagnosis (is|would be)\b(?!\s+(not|unclear|uncertain|still|pending|yet))"
    r"|\bdiagnos(e|ed|ing) you with\b|\byou('ve| have) been diagnosed with\b",
    re.I,
)
_DX_STATEMENT = re.compile(
    r"^(?:(?:so|well|okay|ok|alright|right|based on [^,]+|from what you[^,]+|after [^,]+),\s*)*"
    r"(?:i (?:think|believe|suspect|am (?:fairly |quite |pretty )?(?:sure|confident)) (?:that )?"
    r"|it (?:looks|seems|sounds) (?:like|as if) |most likely,? |it'?s (?:most )?likely (?:that )?)?"
    r"(?:you (?:have|'ve got|have got|are suffering from|suffer from|(?:most )?likely have|probably have)"
    r"|you'?re suffering from|what you have is|this (?:is|looks like|sounds like|could be|might be)"
    r"|it(?: is|'s)|(?:it|this|that) (?:looks|seems|sounds) like)\s+(?:probably |likely |most likely |a case of )?"
    r"(?P<obj>.+)$",
    re.I,
)
_NOT_DX = re.compile(
    r"^(?:a |an |the )?(?:been|to|had|lot|any|some|nothing|no|not|questions?|done|told|described|mentioned"
    r"|important|normal|okay|ok|fine|good|great|helpful|common|understandable|right|correct|true|my|your|what|how"
    r"|why|when|where|very|really|quite|so|too|just|also|hard|difficult|possible|worth|time|free|welcome|sure)\b",
    re.I,
)
_DX_WORD = re.compile(
    r"\w(itis|osis|oma|emia|pathy|plasia|trophy|algia|penia|megaly|philia)\b|\b(syndrome|disease|disorder|infection"
    r"|cancer|tumou?r|fracture|failure|deficiency|insufficiency|stenosis|atresia|palsy|ulcer|hernia|virus|viral"
    r"|bacterial|dementia|neuralgia|diabetes|hypertension|pneumonia|asthma|migraine|infarction|stroke|injury"
    r"|dislocation|rupture|cyst|abscess|sepsis|allergy|poisoning|intoxication|overdose|bite|jaundice|gravis|flu"
    r"|influenza|covid|mono|strep|sprain\w*|a cold|common cold|high blood pressure|high cholesterol)\b",
    re.I,
)
GATE_REPLIES = {
    "diagnosis": "Oh... I see. Thank you for explaining it to me, doctor.",
    "goodbye": "Thank you, doctor. Goodbye.",
}


def _looks_like_diagnosis(obj: str, case: ClinicalCase | None) -> bool:
    obj = obj.strip().rstrip(".!")
    if not obj or _NOT_DX.match(obj):
        return False
    if _DX_WORD.search(obj):
        return True
    if case is not None:
        words, _ = diagnosis_terms(case, exclude_known=False)
        if any(token_matches(t, w) for t in tokens(obj) for w in words):
            return True
    if len(obj.split()) > 8:
        return False
    from m3.clinic.icd10 import map_diagnosis  # builds the title index once (~0.5 s)

    code = map_diagnosis(obj).icd10
    return code is not None and not code.startswith("R")  # R00-R99 are symptoms: "You have a fever."


def termination_gate(question: str, case: ClinicalCase | None = None) -> str | None:
    """The reason to end the dialogue, or None: "diagnosis" when the doctor tells the patient a
    diagnosis, "goodbye" when they end the consultation. Questions ("Could this be X?") never end it."""
    for sentence in split_sentences(question) or [question]:
        s = sentence.strip()
        if s.endswith("?"):
            continue
        if _DX_EXPLICIT.search(s):
            return "diagnosis"
        m = _DX_STATEMENT.match(s)
        if m and _looks_like_diagnosis(m.group("obj"), case):
            return "diagnosis"
        if _GOODBYE.search(s):
            return "goodbye"
    return None
