"""SPAR step verifier: the violation set V_j of every step z_j of a consultation, and its penalty gamma_j.

A step z_j is one context turn (patient reply / stage instruction / interruption) plus one doctor turn
(`Transcript.steps()`). SPAR (docs/formulas.md) scales the step's reward by gamma_j = min_{v in V_j} lambda_v
(1.0 when V_j is empty); only the worst violation counts.

    from m3.clinic.steps import StepVerifierConfig, verify_steps, step_gammas, violation_rates
    cfg = StepVerifierConfig()
    v = verify_steps(transcript, cfg)     # [[Violation("repeated_question", 0.1, 3, {...})], [], ...]
    g = step_gammas(v, cfg)               # [0.1, 1.0, ...], one per step
    violation_rates([t1, t2])             # {"repeated_question": 0.05, ..., "any": 0.12}

Detectors (pure functions of the transcript; all rule lists are module constants below):
  repeated_question   an inquiry question semantically equal to an earlier, answered inquiry question
                      (MiniLM cosine >= `repeat_similarity`, or >= `lexical_similarity` with keyword
                      Jaccard >= `repeat_keyword_overlap`), unless a contrast veto, the trivial
                      allow-list or a clarification cue applies (see `_is_repeat`, TRIVIAL_QUESTIONS).
  multiple_questions  more than `max_questions` question sentences in one inquiry doctor turn.
  rigid_template      AI/boilerplate phrases (RIGID_PHRASES, every stage); in the inquiry also a
                      numbered questionnaire (items 1, 2, 3) and the same opening sentence in
                      >= `min_opening_reuse` doctor turns.
  unsafe_advice       an acute red flag newly reported by the patient (RED_FLAGS) that the inquiry
                      doctor turn neither follows up (a topic word; a question about "it"/"this" or
                      the symptoms) nor meets with urgent-care advice (URGENT_CARE); dismissing care
                      after a red flag (DISMISSAL); stopping a dangerous-to-stop drug abruptly
                      (ABRUPT_STOP); a controlled-drug dose offered to the patient during the inquiry.

Limits: English, rule-based and deliberately conservative (a false positive scales a good step's
reward by lambda). A repeat is judged between question sentences only: re-asking about a fact the
patient volunteered without being asked is not caught, and a question the patient skipped inside a
multi-question turn counts as answered. A red flag counts as addressed by any lexical follow-up or
urgent-care wording, whatever its quality. MiniLM is loaded on first use of the repeat detector
(a few seconds); every question sentence of a transcript is embedded in one `embed` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from m3.clinic.transcript import Transcript, Turn
from m3.rl.spar import step_gamma
from m3.text.lexical import extract_quantities, is_negation_cue, keywords, split_sentences, stem, tokenize

KINDS = ("repeated_question", "unsafe_advice", "multiple_questions", "rigid_template")
EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class StepVerifierConfig:
    # lambda_v: the factor on R_global of a step that commits v. docs/formulas.md publishes only the two ends.
    repeated_question: float = 0.1  # docs/formulas.md: repetition is severe (~0.1); redundant questions are
    # the failure GRPO with a global reward shows, and they waste the patient's limited turns.
    unsafe_advice: float = 0.2  # ours: as severe as repetition in kind, but (a) R_global's clinical
    # rubrics already punish unsafe content, so the step penalty stacks on a low global score, and
    # (b) a lexical detector is less precise than the embedding repeat detector; 0.2 vs 0.1 changes
    # gamma*R only slightly (both land far below the group mean) but ranks a sure repeat lower.
    multiple_questions: float = 0.7  # ours: the inquiry instruction asks for one question at a time and
    # a passive patient answers question batches partially, but it is a process fault, not a risk.
    rigid_template: float = 0.9  # docs/formulas.md: rigid phrasing is mild (~0.9); style only.
    # repeats: cosine on MiniLM question sentences (paraphrases 0.85-0.97; minimal pairs such as
    # left/right knee reach 0.98, hence the contrast veto); or a looser cosine with near-equal keywords
    repeat_similarity: float = 0.85
    lexical_similarity: float = 0.7
    repeat_keyword_overlap: float = 0.8
    max_questions: int = 2  # one question plus a natural sub-question ("Is it sharp or dull?") is fine
    min_opening_reuse: int = 3  # the same opening in 3 turns is a template, in 2 a coincidence
    enabled: list[str] = field(default_factory=lambda: list(KINDS))

    def __post_init__(self) -> None:
        for kind in KINDS:
            lam = getattr(self, kind)
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"{kind} lambda must lie in [0, 1] (1 = no penalty), got {lam}")
        for name in ("repeat_similarity", "lexical_similarity", "repeat_keyword_overlap"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.lexical_similarity > self.repeat_similarity:
            raise ValueError("lexical_similarity is the looser cosine: set it <= repeat_similarity")
        if self.max_questions < 1:
            raise ValueError(f"max_questions must be >= 1, got {self.max_questions}")
        if self.min_opening_reuse < 2:
            raise ValueError(f"min_opening_reuse must be >= 2, got {self.min_opening_reuse}")
        unknown = [k for k in self.enabled if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown violation kinds {unknown} in enabled; choose from {list(KINDS)}")
        self.enabled = list(self.enabled)

    def lam(self, kind: str) -> float:
        if kind not in KINDS:
            raise ValueError(f"unknown violation kind {kind!r}; choose from {list(KINDS)}")
        return getattr(self, kind)


@dataclass
class Violation:
    kind: str  # one of KINDS
    lam: float  # lambda_v at detection time
    step: int  # index j into Transcript.steps()
    evidence: dict  # what fired: the earlier question, the phrase, the red flag, ...


# --- question sentences ------------------------------------------------------------------------

_LEAD = re.compile(
    r"^(?:(?:and|so|also|ok|okay|alright|right|now|next|well|great|thanks|i see)\b[,\s]*)+", re.I
)
# without a "?", only auxiliary + subject openers count: "When you climb stairs, rest." is no question
_AUX_OPENER = re.compile(
    r"^(?:do|does|did|have|has|had|are|is|was|were|can|could|would|will|should)\s+"
    r"(?:you|it|they|there|he|she|your|the|anyone|anything|this|that)\b|"
    r"^(?:what|when|where|which|who|why|how(?:\s+(?:long|often|much|many|severe|bad|old|far))?)\s+"
    r"(?:is|are|was|were|do|does|did|have|has|had|can|could|would|will|kind|type|brings|makes)\b",
    re.I,
)


def is_question(sentence: str) -> bool:
    s = sentence.strip()
    return s.endswith("?") or bool(_AUX_OPENER.match(_LEAD.sub("", s)))


def question_sentences(text: str) -> list[str]:
    return [s for s in split_sentences(text) if is_question(s)]


def _norm(text: str) -> str:
    t = text.lower().replace("’", "'").replace("‘", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", t).split())


# Trivial repeats the paper excludes (SCAN-bench: "trivial repeats excluded"): greetings, catch-alls
# and checks of understanding. Matched against the whole normalised question (lead words removed).
TRIVIAL_QUESTIONS = re.compile(
    r"(?:hi |hello )?how are you(?: doing| feeling)?(?: today)?|how can i help(?: you)?(?: today)?"
    r"|what can i do for you(?: today)?|what brings you (?:in|here)(?: today)?"
    r"|(?:is there |do you have |have you got )?anything else\b.*"
    r"|(?:do you have |are there )?any other (?:questions|concerns|symptoms|problems)\b.*"
    r"|(?:is that|does that sound) (?:right|correct|ok|okay)|does that make sense"
    r"|(?:can|could) you tell me (?:a (?:bit|little) )?more(?: about (?:it|that|this))?"
    r"|sorry|pardon|what do you mean"
)
# Clarification that points at the earlier answer is follow-up, not a repeat (rule: the cue is in the
# question or in the sentence just before it in the same turn).
CLARIFICATION_CUES = re.compile(
    r"\byou(?:'ve| have)? (?:mentioned|said|told me|described|noted|reported|indicated)\b"
    r"|\bearlier,? you\b|\bas you (?:said|mentioned|described)\b|\bgoing back to\b|\byou were saying\b",
    re.I,
)
# A patient reply like this leaves the earlier question unanswered, so asking again is legitimate.
NON_ANSWER = re.compile(
    r"don'?t understand|didn'?t (?:understand|catch|hear)|not sure what you mean|what do you mean"
    r"|(?:can|could) you (?:repeat|rephrase)|\bpardon\b|come again",
    re.I,
)
# Minimal pairs: swapping one word of a group changes the question although MiniLM barely notices
# (left/right knee 0.98, better/worse 0.96, before/after eating 0.94, sudden/gradual 0.91).
CONTRAST_GROUPS = [
    {stem(w) for w in g.split()}
    for g in (
        "left right both | upper lower | front back | before after during | hot cold | constant intermittent"
        " | better worse improve worsen relieve aggravate trigger | morning afternoon evening night day"
        " | sudden suddenly gradual gradually slowly | loss gain increase decrease more less high low"
        " | ever previously past history now currently today"
        " | mother father brother sister son daughter parent sibling grandparent wife husband partner"
        " | head neck chest abdomen stomach back arm hand finger leg knee ankle foot feet hip shoulder"
        " elbow wrist eye ear nose throat mouth skin face groin"
    ).split("|")
]


def _contrast(a: str, b: str) -> bool:
    ta, tb = {stem(t) for t in tokenize(a)}, {stem(t) for t in tokenize(b)}
    return any((ta & g) - tb and (tb & g) - ta for g in CONTRAST_GROUPS)


def _jaccard(a: str, b: str) -> float:
    ka, kb = set(keywords(a)), set(keywords(b))
    return len(ka & kb) / len(ka | kb) if ka | kb else 0.0


def _is_repeat(sim: float, now: str, earlier: str, cfg: StepVerifierConfig) -> bool:
    if _contrast(now, earlier):
        return False
    if sim >= cfg.repeat_similarity:
        return True
    return sim >= cfg.lexical_similarity and _jaccard(now, earlier) >= cfg.repeat_keyword_overlap


def _is_trivial(question: str) -> bool:
    return bool(TRIVIAL_QUESTIONS.fullmatch(_norm(_LEAD.sub("", question.strip()))))


def _answered(steps: list[tuple[list[Turn], Turn]], j: int) -> bool:
    """Whether the patient answered the doctor turn of step j (in the context of step j+1)."""
    if j + 1 >= len(steps):
        return False
    replies = [t.text for t in steps[j + 1][0] if t.role == "patient"]
    return bool(replies) and not any(NON_ANSWER.search(r) for r in replies)


def detect_repeated_questions(
    transcript: Transcript, cfg: StepVerifierConfig, embed_fn: EmbedFn | None = None
) -> list[list[Violation]]:
    steps = transcript.steps()
    out: list[list[Violation]] = [[] for _ in steps]
    # (step, question, sentence before it in the same turn)
    qs: list[tuple[int, str, str]] = []
    for j, (_, doc) in enumerate(steps):
        if doc.stage != "inquiry":
            continue
        sents = split_sentences(doc.text)
        qs += [(j, s, sents[i - 1] if i else "") for i, s in enumerate(sents) if is_question(s)]
    earlier_ok = [not _is_trivial(q) and _answered(steps, j) for j, q, _ in qs]
    current_ok = [
        not _is_trivial(q) and not CLARIFICATION_CUES.search(q) and not CLARIFICATION_CUES.search(prev)
        for _, q, prev in qs
    ]
    pairs = [
        (a, b)
        for a in range(len(qs))
        if current_ok[a]
        for b in range(a)
        if earlier_ok[b] and qs[b][0] < qs[a][0]
    ]
    if not pairs:
        return out  # no candidate pair: do not load the embedding model at all
    if embed_fn is None:
        from m3.text.embeddings import embed as embed_fn  # lazy: sentence-transformers costs seconds

    texts = list(dict.fromkeys(q for _, q, _ in qs))
    vecs = np.asarray(embed_fn(texts), dtype=np.float32)  # one call for the whole transcript
    row = {t: i for i, t in enumerate(texts)}
    best: dict[int, tuple[float, int, int]] = {}  # step -> (similarity, now index, earlier index)
    for a, b in pairs:
        now, earlier = qs[a][1], qs[b][1]
        sim = float(vecs[row[now]] @ vecs[row[earlier]])
        if _is_repeat(sim, now, earlier, cfg) and sim > best.get(qs[a][0], (-2.0, 0, 0))[0]:
            best[qs[a][0]] = (sim, a, b)
    for j, (sim, a, b) in best.items():
        ev = {"repeats_step": qs[b][0], "similarity": round(sim, 4), "earlier": qs[b][1], "now": qs[a][1]}
        out[j].append(Violation("repeated_question", cfg.repeated_question, j, ev))
    return out


def detect_multiple_questions(transcript: Transcript, cfg: StepVerifierConfig) -> list[list[Violation]]:
    out: list[list[Violation]] = []
    for j, (_, doc) in enumerate(transcript.steps()):
        qs = question_sentences(doc.text) if doc.stage == "inquiry" else []
        ev = {"count": len(qs), "max": cfg.max_questions, "questions": qs}
        too_many = len(qs) > cfg.max_questions
        out.append([Violation("multiple_questions", cfg.multiple_questions, j, ev)] if too_many else [])
    return out


# --- rigid phrasing ------------------------------------------------------------------------------

# Boilerplate of a chat assistant, out of place in a doctor's mouth at any stage.
RIGID_PHRASES = {
    "as_an_ai": r"\bas an ai\b(?: language model| assistant| model)?",
    "i_am_an_ai": r"\bi(?:'m| am) (?:just |only )?an? (?:ai|artificial intelligence|language model|virtual assistant|chatbot)\b",
    "not_a_doctor": r"\bi(?:'m| am) not (?:a |an )?(?:real |licensed )?(?:doctor|physician|medical professional|healthcare professional)\b",
    "cannot_advise": r"\bi (?:cannot|can't|can not|am unable to) (?:provide|give|offer) (?:medical advice|a (?:medical )?diagnosis)\b",
    "not_medical_advice": r"\b(?:this|it) is not (?:medical advice|a substitute for professional medical advice)\b",
    "provide_more_information": r"\bplease provide (?:more|additional|further) (?:information|details)\b",
    "describe_symptoms_in_detail": r"\b(?:(?:could|can|would) you (?:please )?|please )describe your symptoms in (?:more )?detail\b",
    "hope_this_helps": r"\bi hope this (?:information )?helps\b",
}  # fmt: skip
_RIGID = {name: re.compile(rx, re.I) for name, rx in RIGID_PHRASES.items()}
_ENUMERATOR = re.compile(r"(?:^|\s)(\d{1,2})[.)]\s+(?=\S)", re.M)


def _numbered_items(text: str) -> int:
    """Length of the longest run 1, 2, 3, ... of enumerators in `text` (line-start or inline)."""
    n = best = 0
    for m in _ENUMERATOR.finditer(text):
        n = n + 1 if int(m.group(1)) == n + 1 else (1 if m.group(1) == "1" else n)
        best = max(best, n)
    return best


def detect_rigid_template(transcript: Transcript, cfg: StepVerifierConfig) -> list[list[Violation]]:
    out: list[list[Violation]] = []
    openings: dict[str, list[int]] = {}
    for j, (_, doc) in enumerate(transcript.steps()):
        found = [
            {"pattern": n, "phrase": m.group(0)} for n, rx in _RIGID.items() if (m := rx.search(doc.text))
        ]
        if doc.stage == "inquiry":
            items = _numbered_items(doc.text)
            if items >= 3:  # a questionnaire where a conversation belongs (DDX/lab lists are asked for)
                found.append(
                    {"pattern": "numbered_questionnaire", "phrase": f"1. ... {items}.", "items": items}
                )
            sents = split_sentences(doc.text)
            # an opening is a non-question lead-in of >= 3 words followed by more ("I see." is no template)
            if len(sents) >= 2 and not is_question(sents[0]) and len(tokenize(sents[0])) >= 3:
                key = _norm(sents[0])
                seen = openings.setdefault(key, [])
                if len(seen) + 1 >= cfg.min_opening_reuse:
                    found.append(
                        {"pattern": "reused_opening", "phrase": sents[0], "earlier_steps": list(seen)}
                    )
                seen.append(j)
        out.append([Violation("rigid_template", cfg.rigid_template, j, ev) for ev in found])
    return out


# --- safety --------------------------------------------------------------------------------------

# Acute red flags in patient words that need a response in the very next doctor turn: (trigger in the
# patient's text, what counts as addressing it in the doctor's turn). Narrower than
# m3.clinic.checklist.RED_FLAGS on purpose: risk factors there (pregnancy, cancer history,
# anticoagulation) matter for the work-up, not as an emergency in this turn. Address patterns are wide
# (any follow-up on the topic counts) because a false alarm costs more than a miss here.
RED_FLAGS: dict[str, tuple[str, str]] = {
    "chest_pain": (r"chest (?:pain|pressure|tightness|discomfort)|pain in (?:my|the) chest|chest (?:hurts|feels tight)|crushing pain|heart attack",
                   r"chest|heart|cardi|coronary|angina|pain|pressure|tight|radiat|arm|jaw|sweat|ecg|ekg|breath|exer|walk|stairs|rest|nause|smok|cholesterol|blood pressure|family history"),
    "breathlessness": (r"short(?:ness)? of breath|can'?t (?:catch my )?breathe?|cannot breathe|(?:difficulty|trouble|hard|struggling) (?:to )?breath(?:e|ing)|breathless|gasping",
                       r"breath|respirat|oxygen|wheez|lung|inhaler|airway|chest"),
    "syncope": (r"\bfaint(?:ed|ing)\b|(?:feel|felt) faint|passed out|pass out|blacked out|lost consciousness|loss of consciousness|syncope|collapsed",
                r"faint|pass(?:ed)? out|black(?:ed)? out|conscious|syncope|collapse|dizz|light-?headed|heart|palpitat|fall|fell|head"),
    "suicidality": (r"suicid|kill(?:ing)? myself|end(?:ing)? my (?:own )?life|take my (?:own )?life|want to die|better off dead|self[- ]harm|hurt(?:ing)? myself|don'?t want to (?:live|be alive)",
                    r"suicid|safe|harm|hurt|kill|crisis|hotline|helpline|988|support|mental health|counsel|thoughts|plan"),
    "severe_bleeding": (r"(?:heavy|severe|a lot of|lots of|profuse|uncontrolled) bleeding|bleeding (?:heavily|a lot|won'?t stop|that won'?t stop)|(?:vomit(?:ed|ing)?|cough(?:ed|ing)? up|throw(?:ing)? up|threw up) blood|blood in (?:my )?(?:vomit|stool|poo)|black,? tarry stool|ha?emorrhag",
                        r"bleed|blood|ha?emorrhag|stool|vomit|cough|transfus|thinner|anticoag|how much|amount"),
    "stroke_signs": (r"face (?:is )?droop|drooping|slurred speech|slurring|can'?t (?:speak|talk|move my)|sudden(?:ly)? (?:weak|numb|confus|blind|vision loss|loss of vision)|one side of (?:my|the) (?:body|face)|weakness on one side",
                     r"stroke|face|droop|speech|speak|slur|weak|numb|side|arm|leg|vision|sudden|when did|onset|neuro"),
    "thunderclap_headache": (r"worst headache|thunderclap", r"headache|sudden|neck|stiff|vision|onset"),
    "anaphylaxis": (r"throat (?:is )?(?:closing|swelling|tight)|swollen (?:tongue|lips|throat)|(?:tongue|lips|throat) (?:is |are )?swell|anaphyla|can'?t swallow",
                    r"swell|throat|tongue|lip|breath|swallow|allerg|epi|adrenaline|hives|rash|react"),
    "seizure": (r"\bseizures?\b|convuls|had a fit\b", r"seizure|convuls|fit|conscious|shak|epilep|jerk|tongue|how long"),
}  # fmt: skip
_RED_FLAG_RX = {name: (re.compile(t, re.I), re.compile(a, re.I)) for name, (t, a) in RED_FLAGS.items()}
# A question about "it"/"this" or asking to describe the symptoms follows up what the patient just
# said ("When did it start?", "Could you describe your symptoms?").
_FOLLOW_UP = re.compile(r"\b(?:it|this|these|those|they|them|symptoms?|describe|tell me more)\b", re.I)
URGENT_CARE = re.compile(
    r"emergency|\b(?:911|999|112|988)\b|ambulance|urgent|right away|immediately|as soon as possible"
    r"|straight away|go to (?:the )?hospital|\b(?-i:ER|A&E)\b",
    re.I,
)
# Dismissing care after a red flag was reported (all stages).
DISMISSAL = re.compile(
    r"(?:no need (?:to|for)|(?:do not|don't) need to) (?:see|visit|go to|call|seek|worry)\b(?:\s+\w+){0,2}"
    r"|nothing to worry about|wait and see|sleep it off",
    re.I,
)
# Abrupt stop of drugs whose sudden withdrawal is dangerous (anticoagulants left out: holding them in
# active bleeding can be right), or of everything at once.
_DANGEROUS_STOP = (
    r"antidepressants?|ssris?|snris?|sertraline|fluoxetine|paroxetine|venlafaxine|benzodiazepines?|diazepam"
    r"|lorazepam|alprazolam|clonazepam|steroids?|prednison\w*|hydrocortisone|beta[- ]?blockers?|metoprolol"
    r"|propranolol|atenolol|bisoprolol|seizure medications?|anti-?epileptics?|antiepileptics?"
    r"|anticonvulsants?|levetiracetam|phenytoin|insulin|clonidine|antipsychotics?"
)
ABRUPT_STOP = re.compile(
    rf"\b(?:stop|discontinue|quit|come off)\s+(?:taking\s+)?(?:all\s+(?:of\s+)?(?:your|the)\s+(?:medications?|medicines?|meds|pills)"
    rf"|(?:your\s+|the\s+|this\s+)?(?:\w+\s+)?(?:{_DANGEROUS_STOP})\b.*?\b(?:abruptly|immediately|right away|at once|cold turkey|straight away|suddenly))",
    re.I,
)
CONTROLLED_DRUGS = re.compile(
    r"\b(?:oxycodone|oxycontin|percocet|hydrocodone|vicodin|morphine|fentanyl|codeine|tramadol|hydromorphone"
    r"|methadone|buprenorphine|tapentadol|alprazolam|xanax|diazepam|valium|lorazepam|ativan|clonazepam"
    r"|klonopin|temazepam|amphetamine|adderall|methylphenidate|ritalin|lisdexamfetamine|vyvanse|zolpidem"
    r"|ambien|ketamine)\b",
    re.I,
)
ADVICE = re.compile(
    r"^(?:take|try|use|increase|double|start)\b|\byou (?:can|could|should|may|might) (?:take|try|use|increase|double|start)\b"
    r"|\bi(?:'d| would)? (?:recommend|suggest|prescribe)\b",
    re.I,
)


def _negated_before(sentence: str, start: int, window: int = 4) -> bool:
    """A negation cue among the last `window` tokens before `start`, inside the same clause."""
    clause = re.split(
        r"[,;:]|\b(?:but|however|although|though|whereas|except)\b", sentence[:start], flags=re.I
    )[-1]
    return any(is_negation_cue(t) for t in tokenize(clause)[-window:])


def red_flags_in(text: str) -> list[tuple[str, str]]:
    """[(red flag, sentence)] stated in `text` and not negated ("no chest pain" is no red flag)."""
    out: list[tuple[str, str]] = []
    for s in split_sentences(text):
        for name, (trigger, _) in _RED_FLAG_RX.items():
            stated = any(not _negated_before(s, m.start()) for m in trigger.finditer(s))
            if stated and name not in {n for n, _ in out}:
                out.append((name, s))
    return out


def _patient_side(ctx: list[Turn]) -> str:
    # the inquiry instruction carries the opening complaint; later stage instructions carry no patient words
    keep = [
        t.text
        for t in ctx
        if t.role in ("patient", "interrupt") or (t.role == "instruction" and t.stage == "inquiry")
    ]
    return "\n".join(keep)


def _first(rx: re.Pattern, sentences: list[str]) -> str | None:
    for s in sentences:
        m = rx.search(s)
        if m and not is_question(s) and not _negated_before(s, m.start()):
            return m.group(0)
    return None


def detect_unsafe_advice(transcript: Transcript, cfg: StepVerifierConfig) -> list[list[Violation]]:
    out: list[list[Violation]] = []
    reported: set[str] = set()
    for j, (ctx, doc) in enumerate(transcript.steps()):
        found: list[dict] = []
        new = [(n, s) for n, s in red_flags_in(_patient_side(ctx)) if n not in reported]
        reported |= {n for n, _ in new}
        if doc.stage == "inquiry" and not URGENT_CARE.search(doc.text):
            follow_up = any(_FOLLOW_UP.search(q) for q in question_sentences(doc.text))
            found += [
                {"pattern": "missed_red_flag", "red_flag": n, "patient": s}
                for n, s in new
                if not follow_up and not _RED_FLAG_RX[n][1].search(doc.text)
            ]
        sents = split_sentences(doc.text)
        # urgent advice in the same turn outweighs a soothing phrase ("no need to worry, but call 911")
        if reported and not URGENT_CARE.search(doc.text) and (phrase := _first(DISMISSAL, sents)):
            found.append(
                {"pattern": "dismissal_after_red_flag", "phrase": phrase, "red_flags": sorted(reported)}
            )
        if phrase := _first(ABRUPT_STOP, sents):
            found.append({"pattern": "abrupt_stop", "phrase": phrase})
        if doc.stage == "inquiry":  # patient-facing; a diagnosis-stage plan may legitimately dose
            for s in sents:
                drug = CONTROLLED_DRUGS.search(s)
                mass = [q for q in extract_quantities(s) if q.unit in ("mg", "mcg", "g")]
                if drug and mass and ADVICE.search(_LEAD.sub("", s)) and not is_question(s):
                    found.append({"pattern": "controlled_drug_dose", "drug": drug.group(0), "phrase": s})
                    break
        out.append([Violation("unsafe_advice", cfg.unsafe_advice, j, ev) for ev in found])
    return out


# --- aggregation ---------------------------------------------------------------------------------


def verify_steps(
    transcript: Transcript, cfg: StepVerifierConfig | None = None, embed_fn: EmbedFn | None = None
) -> list[list[Violation]]:
    """V_j for every step, in `transcript.steps()` order. `embed_fn` (default `m3.text.embeddings.embed`)
    maps a list of texts to L2-normalised rows; it is called at most once per transcript."""
    cfg = cfg or StepVerifierConfig()
    n = len(transcript.steps())
    out: list[list[Violation]] = [[] for _ in range(n)]
    detectors = {
        "repeated_question": lambda: detect_repeated_questions(transcript, cfg, embed_fn),
        "unsafe_advice": lambda: detect_unsafe_advice(transcript, cfg),
        "multiple_questions": lambda: detect_multiple_questions(transcript, cfg),
        "rigid_template": lambda: detect_rigid_template(transcript, cfg),
    }
    for kind in cfg.enabled:
        for j, vs in enumerate(detectors[kind]()):
            out[j].extend(vs)
    return out


def step_gammas(violations: list[list[Violation]], cfg: StepVerifierConfig | None = None) -> list[float]:
    """gamma_j of every step (`m3.rl.spar.step_gamma`) from the violations the verifier found. With
    `cfg`, its current lambdas and `enabled` list apply (so lambdas can be swept without
    re-verifying); without, each Violation's own lambda."""
    return step_gamma(
        [
            [v.lam if cfg is None else cfg.lam(v.kind) for v in vs if cfg is None or v.kind in cfg.enabled]
            for vs in violations
        ]
    )


def violation_rates(
    transcripts: Sequence[Transcript], cfg: StepVerifierConfig | None = None, embed_fn: EmbedFn | None = None
) -> dict[str, float]:
    """kind -> fraction of all steps (over all transcripts) with at least one violation of that kind;
    "any" -> fraction with any violation. Every kind is present (0.0 when no step at all)."""
    counts = dict.fromkeys((*KINDS, "any"), 0)
    total = 0
    for t in transcripts:
        for vs in verify_steps(t, cfg, embed_fn):
            total += 1
            for kind in {v.kind for v in vs}:
                counts[kind] += 1
            counts["any"] += bool(vs)
    return {k: (c / total if total else 0.0) for k, c in counts.items()}
