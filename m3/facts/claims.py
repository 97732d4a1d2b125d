"""Claim extraction for Fact-Aware RL and HealthBench-Hallu (docs/formulas.md, Fact-Aware RL item 1).

    from m3.facts.claims import extract_claims, OpenAIClaimExtractor, ClaimExtractorConfig
    extract_claims("Apixaban is a DOAC. It is dosed at 5 mg twice daily. Let me know if you have questions!")
    # [Claim("Apixaban is a DOAC.", 0), Claim("Apixaban is dosed at 5 mg twice daily.", 1)]
    extractor = OpenAIClaimExtractor(LLMConfig(model="...", base_url="..."))
    claims = await extractor.extract(response, question=question)      # same list[Claim]

Offline rules, in order, per response line and sentence (`m3.text.lexical.split_sentences`):
  1. Non-factual sentences are dropped: questions, greetings and pleasantries ("Great question",
     "I'm sorry to hear"), closers ("I hope this helps", "Let me know", "Feel free to ask"),
     disclaimers about the assistant ("I'm not a doctor", "This is not medical advice"), bare
     lead-ins ending in ":" and headings (short lines with no verb and no final period). Advice IS kept: "Take ibuprofen 400 mg every 6 hours" asserts a dose
     that can be right or wrong, while "Let me know" asserts nothing. "I recommend X" becomes "X".
  2. A list item after a lead-in ("Common side effects include:" / "- nausea") is joined to it
     when the item is a fragment without a verb, so the claim stands alone.
  3. Coordinated independent clauses are split: on ";", and on ", and" / ", but" / ", so" /
     ", while" / ", whereas" when the right side has its own subject and verb (from a fixed verb
     list) or starts with an imperative ("..., and drink fluids"); ", which ..." becomes a claim
     about the main clause's subject ("Apixaban is a DOAC, which has ..." -> "Apixaban has ...").
  4. Pronoun resolution (a heuristic): a clause starting with "It", "They", "This" or "These"
     followed by a verb gets the subject noun phrase of the previous clause instead (the words
     before its first verb). "This is because", "This means" refer to a whole statement and stay.
  5. Fragments with fewer than `min_content_words` content words (`m3.text.lexical.keywords`) are dropped.
  6. Wrong multiple-choice options: when `question` lists options "A." .. "E.", a sentence that
     recites an option the response rejects ("Option B (warfarin) is incorrect because ...",
     "not B", "B. Warfarin" when the answer is C) is not a claim; only its reason clause
     ("because beta-blockers worsen bronchospasm") is kept.
  7. Claims are deduplicated in order by normalised text (case, punctuation, spacing).

Limits: English; rule-based, so long-distance or ambiguous pronouns, ellipsis ("so does X"),
claims spread over several sentences and nested clauses are not handled; the verb list is finite,
so an independent clause with an unlisted verb is not split (a longer claim, never a wrong one).
The LLM extractor (`OpenAIClaimExtractor`) has none of these limits and applies rules 5 and 7 again
to its output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import unicodedata
from dataclasses import dataclass

from m3.facts.types import Claim
from m3.llm import AsyncLLMClient, LLMConfig
from m3.text.lexical import keywords, split_sentences

PROMPT_VERSION = "claims-prompt-v1"


@dataclass(frozen=True)
class ClaimExtractorConfig:
    min_content_words: int = 3  # fragments with fewer content words are not claims
    split_clauses: bool = True
    resolve_pronouns: bool = True
    skip_wrong_options: bool = True
    max_claims: int | None = None  # keep the first N claims (None: all)

    def __post_init__(self) -> None:
        if self.min_content_words < 0:
            raise ValueError(
                f"min_content_words must be >= 0, got {self.min_content_words}; the default is 3"
            )
        if self.max_claims is not None and self.max_claims < 1:
            raise ValueError(f"max_claims must be >= 1 or None (no cap), got {self.max_claims}")


# --- lexicon ---------------------------------------------------------------------------------

_AUX = set(
    "is are was were be been can could may might should must will would shall has have had does do did "
    "isn't aren't wasn't weren't can't cannot couldn't won't wouldn't shouldn't doesn't don't didn't".split()
)
_VERBS = set(
    """reduce reduces reduced lower lowers raise raises increase increases decrease decreases cause causes
    prevent prevents treat treats help helps improve improves worsen worsens affect affects require requires
    need needs include includes contain contains work works act acts block blocks inhibit inhibits lead leads
    result results occur occurs develop develops appear appears resolve resolves last lasts take takes
    start starts begin begins remain remains become becomes indicate indicates suggest suggests protect
    protects relieve relieves ease eases carry carries show shows support supports trigger triggers
    interact interacts bind binds target targets kill kills spread spreads affect affects damage damages""".split()
)
_IMPERATIVES = set(
    """take avoid drink use see call seek stop continue start keep rest apply monitor check eat limit
    consult ask talk visit go get give wash try consider schedule follow tell wear""".split()
)
_PRONOUNS = {"it", "they", "this", "these"}
_SKIP_PRONOUN = re.compile(
    r"^(?:this|that|it)\s+(?:is|was)\s+(?:because|why|how|what|not\s+medical)|^(?:this|that)\s+means\b", re.I
)
_LEAD_WORDS = re.compile(
    r"^(?:also|however|additionally|in addition|moreover|furthermore|importantly|generally|typically|"
    r"in general|overall|note|remember|first|second|third|finally|then|so|and|but|in summary|in short)\s*[,:]?\s+",
    re.I,
)
_RECOMMEND = re.compile(
    r"^(?:i|we)\s+(?:would\s+|'d\s+|strongly\s+|generally\s+)?(?:recommend|suggest|advise)\s+(?:that\s+)?(?:you\s+)?",
    re.I,
)
_NON_FACTUAL = re.compile(
    r"^(?:hi|hello|hey|dear|greetings|thanks|thank you|good (?:morning|afternoon|evening)|great question|"
    r"good question|i'?m (?:so |very )?sorry|sorry to hear|i understand|i hope|hope (?:this|that|it) helps|"
    r"glad|happy to help|take care|best wishes|wishing you|stay safe|as an ai|i am an ai|i'?m an ai|"
    r"i'?m not a doctor|i am not a doctor|i'?m not a medical|i cannot|i can'?t|i'?m unable|i am unable|"
    r"this is not (?:a substitute|medical advice)|this (?:information )?is (?:for )?(?:general |educational |informational )|"
    r"here (?:is|are|'s)|please note|disclaimer)\b"
    r"|\b(?:let me know|feel free|don'?t hesitate|do not hesitate|reach out|ask me|keep me posted|"
    r"i hope this helps|hope this helps|if you have (?:any )?(?:other |more |further )?questions)\b",
    re.I,
)
_WRONG_CUE = re.compile(
    r"\b(?:incorrect|wrong|false|inappropriate|not (?:correct|right|appropriate|the (?:best|correct|right)|indicated|"
    r"recommended)|isn'?t (?:correct|right)|ruled out|can be excluded|less likely|unlikely|eliminat\w*)\b",
    re.I,
)
_REASON = re.compile(r"\b(?:because|since|as|due to|given that)\s+(.+)$", re.I)
_OPTION_LINE = re.compile(r"^\s*\(?([A-E])[).:]\s+(.+?)\s*$")
_OPTION_INLINE = re.compile(r"(?:^|\s)\(?([A-E])[).:]\s+(.+?)(?=\s+\(?[A-E][).:]\s+|\s*$)", re.S)
_CHOSEN = re.compile(
    r"\b(?:correct|best|right)?\s*(?:answer|option|choice)\s*(?:is|:)\s*\(?(?:option\s+)?([A-E])\b\)?"
    r"|\b(?:option|choice)\s+\(?([A-E])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)",
    re.I,
)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")


def normalize_text(text: str) -> str:
    """Dedup key: NFKC, casefold, words and numbers only ("Take 5mg!" == "take 5 mg")."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+|[%<>≤≥]", t))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][\w'/-]*|\d[\d.,/%-]*", text)


def _has_verb(words: list[str]) -> bool:
    return any(w.lower() in _AUX or w.lower() in _VERBS for w in words)


def subject_of(clause: str) -> str | None:
    """The words before the clause's first verb ("Direct oral anticoagulants are ..." -> "Direct
    oral anticoagulants"); None for an imperative, a pronoun, a subordinate opening or no verb."""
    words = clause.split()
    for i, w in enumerate(words[:9]):
        bare = re.sub(r"[^\w'-]", "", w).lower()
        if bare in _AUX or bare in _VERBS:
            subj = " ".join(words[:i]).strip(" ,;:")
            first = subj.split()[0].lower() if subj else ""
            if (
                not subj
                or first
                in _PRONOUNS
                | {
                    "if",
                    "when",
                    "in",
                    "for",
                    "while",
                    "although",
                    "because",
                    "after",
                    "before",
                    "to",
                    "there",
                    "you",
                    "we",
                    "i",
                }
                or "," in subj
            ):
                return None
            return subj
    return None


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _finish(text: str) -> str:
    text = text.strip(" ,;:-–—")
    return text if not text or text[-1] in ".!?" else text + "."


# --- clause splitting and pronouns -----------------------------------------------------------

_COORD = re.compile(r",\s+(?:and|but|so|while|whereas)\s+", re.I)
_WHICH = re.compile(r",\s+which\s+", re.I)


def _independent(right: str, min_words: int) -> bool:
    words = _words(right)
    if not words:
        return False
    # A leading pronoun will be replaced by a noun phrase, which brings its own content words.
    need = min_words - 1 if words[0].lower() in _PRONOUNS else min_words
    if len(keywords(right)) < max(need, 1):
        return False
    if words[0].lower() in _IMPERATIVES:
        return True
    return _has_verb(words[1:8])


def split_clauses(sentence: str, min_words: int = 3) -> list[str]:
    """Independent clauses of one sentence (see module docstring, rule 3)."""
    parts: list[str] = []
    for piece in re.split(r"\s*;\s*", sentence):
        m = _WHICH.search(piece)
        if m:
            subj = subject_of(piece[: m.start()])
            if subj and len(keywords(piece[m.end() :])) >= min_words:
                parts += [piece[: m.start()], f"{subj} {piece[m.end() :]}"]
                continue
        start = 0
        for m in _COORD.finditer(piece):
            left, right = piece[start : m.start()], piece[m.end() :]
            # Both sides must be clauses: "Fever, muscle aches, and fatigue are ..." is one subject.
            if _independent(left, min_words) and _independent(right, min_words):
                parts.append(left)
                start = m.end()
        parts.append(piece[start:])
    return [p.strip() for p in parts if p.strip()]


def resolve_pronoun(clause: str, antecedent: str | None) -> str:
    """Replace a leading It/They/This/These (followed by a verb) with `antecedent`."""
    if not antecedent or _SKIP_PRONOUN.match(clause):
        return clause
    words = clause.split()
    contraction = {"it's": "is", "they're": "are"}.get(words[0].lower().replace("’", "'")) if words else None
    if contraction:
        words = [words[0], contraction, *words[1:]]
    if len(words) < 2 or words[0].lower() not in _PRONOUNS and not contraction:
        return clause
    nxt = [re.sub(r"[^\w']", "", w).lower() for w in words[1:3]]
    if not (nxt[0] in _AUX | _VERBS or (len(nxt) > 1 and nxt[1] in _AUX | _VERBS and nxt[0].endswith("ly"))):
        return clause  # "This drug is ...": a noun phrase is its own subject
    return " ".join([_capitalize(antecedent), *words[1:]])


# --- multiple choice -------------------------------------------------------------------------


def parse_options(question: str | None) -> dict[str, str]:
    """Options "A." .. "E." of a multiple-choice question, one a line or inline; {} when none."""
    if not question:
        return {}
    opts = {
        m.group(1): m.group(2).strip() for line in question.splitlines() if (m := _OPTION_LINE.match(line))
    }
    if len(opts) < 2:
        opts = {m.group(1): m.group(2).strip() for m in _OPTION_INLINE.finditer(question)}
    return opts if len(opts) >= 2 else {}


def _chosen(response: str) -> str | None:
    m = _CHOSEN.search(response)
    return (m.group(1) or m.group(2)).upper() if m else None


def _rejected_option(raw_line: str, sentence: str, options: dict[str, str], chosen: str | None) -> str | None:
    """The letter of a wrong option this sentence recites, or None."""
    m = _OPTION_LINE.match(raw_line)
    if m and m.group(1) in options and m.group(1) != chosen and sentence == split_sentences(raw_line)[0]:
        return m.group(1)  # "B. Warfarin ..." listed by the response: a recitation
    for letter, text in options.items():
        if letter == chosen:
            continue
        named = re.search(
            rf"\b(?:option|choice|answer)\s+\(?{letter}\)?(?!\w)|\({letter}\)|^\(?{letter}[).:]\s", sentence
        )
        negated = re.search(rf"\b(?i:not)\s+(?i:option\s+)?\(?{letter}\)?(?!\w)", sentence)
        recited = normalize_text(text) and normalize_text(text) in normalize_text(sentence)
        if negated or ((named or recited) and _WRONG_CUE.search(sentence)):
            return letter
        if recited and normalize_text(sentence).strip() == normalize_text(text):
            return letter
    return None


# --- extraction ------------------------------------------------------------------------------


def _clean(sentence: str) -> str:
    s = _LEAD_WORDS.sub("", sentence.strip())
    s = _RECOMMEND.sub("", s)
    return _capitalize(s.strip())


def _is_heading(sentence: str) -> bool:
    """A short line without a verb or final punctuation ("**Stroke risk and warfarin**")."""
    words = _words(sentence)
    return len(words) <= 8 and not sentence.rstrip().endswith((".", "!")) and not _has_verb(words)


def _is_factual(sentence: str) -> bool:
    s = sentence.strip()
    return bool(s) and not s.endswith(("?", ":")) and not _NON_FACTUAL.search(s)


def extract_claims(
    response: str, *, question: str | None = None, cfg: ClaimExtractorConfig | None = None
) -> list[Claim]:
    """Atomic claims of `response`, in order (module docstring lists the rules)."""
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    cfg = cfg or ClaimExtractorConfig()
    options = parse_options(question) if cfg.skip_wrong_options else {}
    chosen = _chosen(response) if options else None
    out: list[Claim] = []
    seen: set[str] = set()
    antecedent: str | None = None
    lead: str | None = None
    index = -1
    for raw in response.splitlines():
        bullet = bool(_BULLET.match(raw))
        if not bullet and raw.strip():
            lead = None
        for sentence in split_sentences(raw):
            index += 1
            text = sentence
            letter = _rejected_option(raw, sentence, options, chosen) if options else None
            if letter is not None:
                reason = _REASON.search(sentence)
                if not reason:
                    continue
                text = reason.group(1)
                opt = options[letter]
                if len(opt.split()) <= 5:  # "because it worsens asthma": "it" is the option
                    text = resolve_pronoun(text, opt)
            if sentence.rstrip().endswith(":") and not bullet:
                lead = sentence.rstrip()[:-1]
                continue
            if bullet and lead and not _has_verb(_words(text)):
                text = f"{lead} {text[:1].lower() + text[1:]}"  # "Side effects include: nausea"
            elif _is_heading(text):
                continue
            if not _is_factual(text):
                continue
            text = _clean(text)
            clauses = split_clauses(text, cfg.min_content_words) if cfg.split_clauses else [text]
            for clause in clauses:
                if cfg.resolve_pronouns:
                    clause = resolve_pronoun(_capitalize(_LEAD_WORDS.sub("", clause)), antecedent)
                antecedent = subject_of(clause) or antecedent
                if len(keywords(clause)) < cfg.min_content_words or not _is_factual(clause):
                    continue
                claim = _finish(_capitalize(clause))
                key = normalize_text(claim)
                if key in seen:
                    continue
                seen.add(key)
                out.append(Claim(claim, index))
                if cfg.max_claims is not None and len(out) >= cfg.max_claims:
                    return out
    return out


# --- LLM extractor ---------------------------------------------------------------------------

SYSTEM = (
    "You extract checkable factual claims from a medical assistant's answer. You never judge whether "
    "they are true. Answer with one JSON object."
)

USER = """{question_block}# Answer
{response}

# Instructions
List every atomic factual claim the answer makes, in the order it makes them:
- One fact per claim; split sentences that state several facts.
- Each claim must stand alone: replace pronouns and references ("it", "this drug", "the first option") with what they refer to.
- Keep doses, numbers, units, frequencies, populations and conditions exactly as the answer states them.
- Include advice that can be checked ("Take ibuprofen 400 mg every 6 hours"); exclude greetings, questions, empathy, offers of further help and disclaimers.
- If the question is multiple choice, do not list the text of options the answer rejects; list only the answer's own reasons.
- Do not repeat a claim.
Return JSON only: {{"claims": ["<claim>", ...]}}"""


def extractor_messages(response: str, question: str | None = None) -> list[dict]:
    block = f"# Question\n{question}\n\n" if question else ""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER.format(question_block=block, response=response)},
    ]


def validate_claims(data: dict) -> dict:
    """Schema check: {"claims": [str, ...]}; ValueError makes the client re-ask."""
    claims = data.get("claims")
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        raise ValueError(f'"claims" must be a list of strings, got {claims!r}'[:200])
    return {"claims": [c.strip() for c in claims if c.strip()]}


class ClaimExtractionError(RuntimeError):
    """The endpoint failed (after the client's retries and re-asks); nothing was extracted."""


class OpenAIClaimExtractor:
    """Claims from an LLM endpoint (e.g. a distilled 8B extractor served by vLLM)."""

    def __init__(self, llm: LLMConfig, cfg: ClaimExtractorConfig | None = None) -> None:
        if llm.template_version == "v1":  # tie the client's answer cache to this file's prompt
            llm = dataclasses.replace(llm, template_version=PROMPT_VERSION)
        self.llm, self.cfg = llm, cfg or ClaimExtractorConfig()
        self.client = AsyncLLMClient(llm)

    async def extract(self, response: str, question: str | None = None) -> list[Claim]:
        if not isinstance(response, str):
            raise ValueError(f"response must be a str, got {type(response).__name__}")
        if not response.strip():
            return []
        r = await self.client.chat_json(extractor_messages(response, question), validate_claims)
        if not r.ok:
            raise ClaimExtractionError(f"claim extraction failed: {r.error}")
        assert r.data is not None
        sentences = [set(keywords(s)) for s in split_sentences(response)]
        out: list[Claim] = []
        seen: set[str] = set()
        for text in r.data["claims"]:
            key = normalize_text(text)
            if key in seen or len(keywords(text)) < self.cfg.min_content_words:
                continue
            seen.add(key)
            out.append(Claim(_finish(text), _best_sentence(text, sentences)))
        return out[: self.cfg.max_claims] if self.cfg.max_claims else out

    async def extract_many(self, items: list[tuple[str, str | None]]) -> list[list[Claim]]:
        """(response, question) pairs, concurrently (bounded by `LLMConfig.max_concurrency`)."""
        return list(await asyncio.gather(*(self.extract(r, q) for r, q in items)))

    async def aclose(self) -> None:
        await self.client.aclose()


def _best_sentence(claim: str, sentences: list[set[str]]) -> int:
    """Index of the response sentence sharing most keywords with the claim (-1: none)."""
    kws = set(keywords(claim))
    best, where = 0.0, -1
    for i, s in enumerate(sentences):
        score = len(kws & s) / (len(kws | s) or 1)
        if score > best:
            best, where = score, i
    return where
