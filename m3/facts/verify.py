"""Claim verifiers (`m3.facts.types.ClaimVerifier`): an offline heuristic one and an LLM one.

    from m3.facts.corpus import load_guideline_corpus
    from m3.facts.retrieval import HybridRetriever
    from m3.facts.verify import OfflineVerifier, OpenAIVerifier
    retriever = HybridRetriever(load_guideline_corpus())
    verdicts = asyncio.run(OfflineVerifier(retriever).verify(["Apixaban's standard dose is 5 mg twice daily."]))
    verdicts[0].label, verdicts[0].evidence_ids, verdicts[0].rationale
    llm = OpenAIVerifier(retriever, LLMConfig(model="gpt-4.1", base_url=...))   # same interface

OfflineVerifier ("offline-nli-v1+<retriever version>") compares the claim with every premise of
its top-k passages: each sentence of each line (a line's short "Label:" is carried to its later
sentences; "# heading" lines and a preceding "...:" lead-in are context, not premises):
  * similarity = mean of the MiniLM cosine (claim vs "heading: premise") and keyword coverage: the
    share of the claim's content words found in the premise or its context (title, section,
    heading, lead-in), weighted by a local IDF over the claim's candidate premises, so topic words
    every candidate shares count little and the words that single out a premise count most;
    abbreviations (AF, CrCl, OAC, ...) match their spelled-out forms;
  * a premise SUPPORTS when polarity agrees (`is_negated` over the shared words), no contrast
    pair differs (increase/reduce, before/after, men/women, superior/inferior, ...) and every
    number and quantity of the claim is stated by the premise (`quantities_agree`; 1 g = 1000 mg;
    "TDS"/"BD"/"OD" and "3-day" are normalised first);
  * a premise CONFLICTS when polarity differs, a contrast pair differs, or the claim states a
    quantity whose dimension the premise states with other values (5 mg vs 2.5 mg), or a bare
    number the premise lacks while stating others ("score >= 3" vs "score >= 2");
  * Supported: best supporting premise >= `support_threshold` and not beaten by a conflict (a
    sibling line of the same passage may beat it by `support_margin`: in "score 0: ...",
    "score >= 2: ..." lists the other rows are no evidence against the claim);
    Refuted: best conflicting premise >= `refute_threshold` with coverage >= `refute_min_coverage`
    (the conflict is about the same drug/term); else Uncertain.
Confidence is the deciding similarity rescaled to [0.5, 1] (for Uncertain: 1 - best similarity):
a ranking score, not a calibrated probability. Thresholds and lexicons were chosen on the
hand-labelled claims in tests/m3/facts/test_verify.py; its docstring gives the held-out figures.
Only premises whose coverage could still reach a threshold are embedded (exact pruning).

OpenAIVerifier shows the claim and the retrieved passages (with ids) to an LLM and asks for
{"label", "evidence_ids", "rationale"}; a label outside LABELS or an id that was not shown is
re-asked (`LLMConfig.json_retries`). Endpoint failures raise `VerificationError` (with the verdicts
that did succeed) instead of returning a made-up Uncertain that a cache would keep.

Limits (offline): lexical polarity (double negation - "cannot ... without" vs "can ... with or
without" -, "not only", negation far from the shared words are misread); no role swaps ("prefer X
over Y" = "prefer Y over X"); comparison direction ("< 120" vs "> 120") is not checked; a number
stated elsewhere in the passage than on the premise line ("10-year risk" in the intro) makes a
true claim Uncertain; claims combining two premises are Uncertain; contrast and abbreviation
lexicons are small and English; "Uncertain" also covers true claims the digests do not state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from m3.facts.corpus import HEADING_MARK, HEADING_SEP
from m3.facts.retrieval import Hit, Retriever
from m3.facts.types import LABELS, Passage, Verdict
from m3.llm import AsyncLLMClient, LLMConfig
from m3.text.lexical import (
    dimension,
    extract_quantities,
    is_negated,
    keywords,
    quantities_agree,
    same_quantity,
    split_sentences,
    stem,
    tokenize,
)

OFFLINE_VERSION = "offline-nli-v1"
PROMPT_VERSION = "verify-prompt-v1"


class VerificationError(RuntimeError):
    """Some claims could not be verified; `verdicts` holds the others (None where it failed)."""

    def __init__(self, message: str, verdicts: list[Verdict | None]) -> None:
        super().__init__(message)
        self.verdicts = verdicts


@dataclass(frozen=True)
class OfflineVerifierConfig:
    k: int = 5  # passages retrieved per claim
    support_threshold: float = 0.58
    refute_threshold: float = 0.62
    refute_min_coverage: float = 0.5
    support_margin: float = 0.05  # Supported even when a sibling conflict is up to this much more similar
    min_premise_keywords: int = 2  # shorter lines (a bare heading) are not premises

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1 passages, got {self.k}")
        for name in ("support_threshold", "refute_threshold", "refute_min_coverage", "support_margin"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


# --- premise features ---------------------------------------------------------------------------

# "≥ 2", "2.0–3.0"; not names ("CHA2DS2", "G3a", "CURB-65") nor compound adjectives ("3-tier").
_BARE_NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)\d+(?:\.\d+)?(?![\w])(?!-[A-Za-z])")

# Opposite poles: a claim using one side where the premise uses only the other says the opposite.
_CONTRASTS = [
    ("increase increased increases raise raises higher more greater above elevate elevated",
     "decrease decreased decreases reduce reduces reduced lower lowers less fewer below"),
    ("before prior pre", "after following post"),
    ("superior better", "inferior worse"),
    ("men male", "women female"),
    ("adult adults", "child children pediatric infant infants"),
    ("acute", "chronic"),
    ("early", "late delayed"),
    ("hypertension hyperkalemia hyperglycemia tachycardia", "hypotension hypokalemia hypoglycemia bradycardia"),
    ("bacterial", "viral"),
    ("first-line first", "second-line second last"),
    ("maximum", "minimum"),
]  # fmt: skip
_POLE = [({stem(w) for w in a.split()}, {stem(w) for w in b.split()}) for a, b in _CONTRASTS]


_YEAR = re.compile(r"^(?:19|20)\d\d$")  # "the 2023 guideline": a date, not a threshold
# British/Latin dosing codes after a dose ("500 mg TDS"), which m3.text.lexical does not parse.
_DOSING = {"OD": "once daily", "BD": "twice daily", "TDS": "three times daily", "QDS": "four times daily"}
_DOSING_RE = re.compile(r"(?<=[\d\w]\s)(OD|BD|TDS|QDS)\b")


# "a 3-day course", "10-year risk": durations written as adjectives, which m3.text.lexical does not parse.
_COMPOUND_TIME = re.compile(r"\b(\d+(?:\.\d+)?)-(minute|hour|day|week|month|year)s?\b", re.I)


def normalize_dosing(text: str) -> str:
    """ "500 mg TDS" -> "500 mg three times daily" (uppercase codes after a dose only) and
    "3-day" -> "3 day", so both are compared as quantities."""
    return _COMPOUND_TIME.sub(r"\1 \2", _DOSING_RE.sub(lambda m: _DOSING[m.group(1)], text))


def _bare(text: str) -> set[float]:
    """Numbers without a unit (years excluded)."""
    units = {q.value for q in extract_quantities(text)}
    return {float(n) for n in _BARE_NUMBER.findall(text) if not _YEAR.match(n)} - units


def _numbers(text: str) -> set[float]:
    return _bare(text) | {q.value for q in extract_quantities(text)}


def _stems(text: str) -> set[str]:
    return {stem(t) for t in tokenize(text.replace("-", " "))} | {stem(t) for t in tokenize(text)}


# Comparators of a number ("2 or higher", "more than 3", "below 0.70") state a threshold, not a
# direction of effect, so they must not count as "up"/"down" words.
_COMPARATOR = re.compile(
    r"(?<=\d)(?:\s*\S*)?\s+(?:or|and)\s+(?:higher|more|greater|above|over|lower|less|fewer|below|under)\b"
    r"|\b(?:(?:more|less|fewer|greater|higher|lower)\s+than|above|below|over|under)(?=\s*[<>≤≥=~]?\s*\.?\d)",
    re.I,
)


def contrast_conflict(claim: str, premise: str) -> str | None:
    """A contrast word of the claim whose opposite, and not itself, the premise uses."""
    c, p = _stems(_COMPARATOR.sub(" ", claim)), _stems(_COMPARATOR.sub(" ", premise))
    for a, b in _POLE:
        for mine, other in ((a, b), (b, a)):
            if c & mine and not c & other and p & other and not p & mine:
                return f"{sorted(c & mine)[0]} vs {sorted(p & other)[0]}"
    return None


def quantity_conflict(claim: str, premise: str) -> str | None:
    """A quantity or bare number of the claim that the premise contradicts (see module docstring)."""
    pq = extract_quantities(premise)
    for q in extract_quantities(claim):
        same_dim = [f for f in pq if dimension(f.unit) == dimension(q.unit)]
        if same_dim and not any(same_quantity(q, f) for f in same_dim):
            return f"{q.value:g} {q.unit} vs {', '.join(f'{f.value:g} {f.unit}' for f in same_dim[:3])}"
    claim_bare = _bare(claim)
    premise_numbers = _numbers(premise)
    missing = sorted(n for n in claim_bare if n not in premise_numbers)
    if missing and _bare(premise):
        return f"{missing[0]:g} not among {', '.join(f'{n:g}' for n in sorted(premise_numbers)[:4])}"
    return None


# "1.1.1" (a section number) makes m3.text.lexical.quantities_agree fail to parse a float: split it first.
_DOTTED = re.compile(r"\d+(?:\.\d+){2,}")


def numbers_stated(claim: str, premise: str) -> bool:
    """Every quantity and bare number of the claim appears in the premise."""
    premise = _DOTTED.sub(lambda m: m.group(0).replace(".", " "), premise)
    if not quantities_agree(extract_quantities(claim), premise):
        return False
    return _bare(claim) <= _numbers(premise)


def polarity_conflict(claim: str, premise: str) -> bool:
    shared = sorted(set(keywords(claim)) & set(keywords(premise)))
    return bool(shared) and is_negated(claim, shared) != is_negated(premise, shared)


@dataclass
class _Premise:
    text: str  # the line itself: polarity and numbers are checked on it alone
    passage: Passage
    context: set[str]  # keywords of the passage's title, section and the heading above the line
    embed_text: str  # "<heading>: <line>", so "Start if eGFR >= 20" is embedded as about SGLT2i


def _premises(hits: Sequence[Hit], min_keywords: int) -> list[_Premise]:
    out: list[_Premise] = []
    for p, _ in hits:
        base = premise_keywords(f"{p.title} {p.section.replace('_', ' ')}")
        heading, lead = "", ""
        for raw in p.text.splitlines():
            if raw.startswith(HEADING_MARK):  # context for the lines below, not a premise
                heading, lead = raw[len(HEADING_MARK) :].split(HEADING_SEP)[-1].strip(), ""
                continue
            context = base | premise_keywords(f"{heading} {lead}")
            sentences = [normalize_dosing(s) for s in split_sentences(raw)]
            label, sep, _ = sentences[0].partition(": ") if sentences else ("", "", "")
            if sep and len(label.split()) <= 6:  # "< 5.0% (Low Risk): ..." governs every sentence of the line
                sentences[1:] = [f"{label}: {s}" for s in sentences[1:]]
            for s in sentences:
                if len(keywords(s)) >= min_keywords:
                    out.append(_Premise(s, p, context, f"{heading}: {s}" if heading else s))
            if raw.rstrip().endswith(":"):  # "Refer to nephrology when any of the following:" frames the list
                lead = raw
    return out


# Abbreviations the digests use where a claim spells the term out (or the reverse); both forms
# count as present. Only unambiguous clinical ones.
_ABBREVIATIONS = {
    "af": "atrial fibrillation", "bp": "blood pressure", "hr": "heart rate", "map": "mean arterial pressure",
    "crcl": "creatinine clearance", "egfr": "estimated glomerular filtration rate", "gfr": "glomerular filtration rate",
    "oac": "oral anticoagulation", "doac": "direct oral anticoagulant", "doacs": "direct oral anticoagulants",
    "pe": "pulmonary embolism", "dvt": "deep vein thrombosis", "vte": "venous thromboembolism",
    "ckd": "chronic kidney disease", "aki": "acute kidney injury", "hf": "heart failure",
    "hfref": "heart failure reduced ejection fraction", "mi": "myocardial infarction",
    "copd": "chronic obstructive pulmonary disease", "cap": "community acquired pneumonia",
    "ics": "inhaled corticosteroid", "ctpa": "computed tomography pulmonary angiography",
    "tia": "transient ischemic attack", "acs": "acute coronary syndrome", "icu": "intensive care unit",
    "ed": "emergency department", "iv": "intravenous", "po": "oral", "bmi": "body mass index",
    "ldl": "low density lipoprotein", "ascvd": "atherosclerotic cardiovascular disease",
}  # fmt: skip
_EXPANSIONS = [(stem(a), set(keywords(full))) for a, full in _ABBREVIATIONS.items()]


def premise_keywords(text: str) -> set[str]:
    """keywords(text) plus the spelled-out or abbreviated form of every abbreviation it uses."""
    kws = set(keywords(text))
    for abbr, full in _EXPANSIONS:
        if abbr in kws:
            kws |= full
        elif full <= kws:
            kws.add(abbr)
    return kws


def keyword_weights(premises: Sequence[_Premise]) -> dict[str, float]:
    """Local IDF over the claim's premises (line keywords plus context): words every candidate
    shares (the guideline's topic: "pe", "wells") weigh ~1, words that tell candidates apart
    ("dimer") up to ~1 + ln(N/2). Unseen words get the maximum: a claim about grapefruit juice is
    not covered by any premise."""
    n = len(premises)
    df: dict[str, int] = {}
    for pr in premises:
        for k in premise_keywords(pr.text) | pr.context:
            df[k] = df.get(k, 0) + 1
    top = math.log((n + 1) / 1) + 1
    return {"": top, **{k: math.log((n + 1) / (d + 1)) + 1 for k, d in df.items()}}


# Not counted by `coverage`: comparators (guidelines write "<", "≥") and contrast words, which a
# contradicting premise lacks by definition ("first-line" vs "second-line").
_NOT_COVERED = {
    stem(w) for w in "below above under over least less more most greater exceed within than".split()
}


def coverage(
    claim: str, premise: str, context: set[str] = frozenset(), weights: dict[str, float] | None = None
) -> float:
    """Weighted share of the claim's content keywords (no numbers, comparators or contrast words)
    found in the premise or its context."""
    have = premise_keywords(premise) | context
    flipped = {
        w
        for a, b in _POLE
        for mine, other in ((a, b), (b, a))
        if have & other and not have & mine
        for w in mine
    }
    kws = [k for k in keywords(claim) if not k[0].isdigit() and k not in _NOT_COVERED and k not in flipped]
    if not kws:
        return 0.0
    w = weights or {}
    unseen = w.get("", 1.0)
    total = sum(w.get(k, unseen) for k in kws)
    return sum(w.get(k, unseen) for k in kws if k in have) / total


# --- offline verifier ---------------------------------------------------------------------------


class OfflineVerifier:
    """Heuristic entailment over retrieved passages; deterministic, CPU only."""

    name = "offline"

    def __init__(self, retriever: Retriever, cfg: OfflineVerifierConfig | None = None) -> None:
        self.retriever = retriever
        self.cfg = cfg or OfflineVerifierConfig()
        tag = OFFLINE_VERSION
        if self.cfg != OfflineVerifierConfig():  # other thresholds, other verdicts: never share a cache
            tag += "-" + hashlib.sha256(repr(dataclasses.astuple(self.cfg)).encode()).hexdigest()[:6]
        self.version = f"{tag}+{retriever.version}"

    async def verify(self, claims: list[str]) -> list[Verdict]:
        if isinstance(claims, str) or not all(isinstance(c, str) for c in claims):
            raise ValueError("verify() takes a list of claim strings; wrap a single claim as [claim]")
        if not claims:
            return []
        # Retrieval and encoding are CPU-bound: one worker thread, batched, keeps the event loop free.
        return await asyncio.to_thread(self.verify_sync, list(claims))

    def verify_sync(self, claims: list[str]) -> list[Verdict]:
        """`verify` without the event loop: retrieval, lexical pre-filter, one embedding batch."""
        from m3.text.embeddings import embed

        hits = self.retriever.search_many(claims, self.cfg.k)
        # sim = (cos + cov) / 2 with cos <= 1, so a premise with cov < 2 * threshold - 1 can never
        # reach a threshold: skipping its embedding changes no verdict and saves most encoding time.
        floor = 2 * min(self.cfg.support_threshold, self.cfg.refute_threshold) - 1
        scored = []
        for claim, h in zip(claims, hits, strict=True):
            premises = _premises(h, self.cfg.min_premise_keywords)
            weights = keyword_weights(premises)
            covs = [(pr, coverage(normalize_dosing(claim), pr.text, pr.context, weights)) for pr in premises]
            scored.append([(pr, cov) for pr, cov in covs if cov >= floor])
        texts = list(dict.fromkeys([*claims, *(pr.embed_text for sc in scored for pr, _ in sc)]))
        vecs = dict(zip(texts, embed(texts), strict=True))  # one batch for all claims and premises
        return [self._judge(c, h, sc, vecs) for c, h, sc in zip(claims, hits, scored, strict=True)]

    def _judge(
        self, claim_text: str, hits: list[Hit], scored: list[tuple[_Premise, float]], vecs: dict
    ) -> Verdict:
        cfg = self.cfg
        claim = normalize_dosing(claim_text)
        checked = [p.id for p, _ in hits]
        best: dict[str, tuple[float, _Premise, str]] = {}  # kind -> (similarity, premise, reason)
        top = 0.0
        for pr, cov in scored:
            sim = 0.5 * float(vecs[claim_text] @ vecs[pr.embed_text]) + 0.5 * cov
            top = max(top, sim)
            reason = None
            if polarity_conflict(claim, pr.text):
                reason = "negation differs"
            elif (why := contrast_conflict(claim, pr.text)) is not None:
                reason = f"contrast {why}"
            elif (why := quantity_conflict(claim, pr.text)) is not None:
                reason = f"quantity {why}"
            if reason is not None and cov >= cfg.refute_min_coverage:
                kind = "refute"
            elif reason is None and numbers_stated(claim, pr.text):
                kind = "support"
            else:
                continue
            if sim > best.get(kind, (-1.0,))[0]:
                best[kind] = (sim, pr, reason or "")
        sup, ref = best.get("support"), best.get("refute")
        # A close support beats a conflict from the same passage: in a list of thresholds
        # ("score 0: ...", "score >= 2: ...") the sibling lines stating other numbers than the
        # claim's are no evidence against it.
        margin = cfg.support_margin if sup and ref and sup[1].passage.id == ref[1].passage.id else 0.0
        if sup and sup[0] >= cfg.support_threshold and (not ref or sup[0] >= ref[0] - margin):
            return self._verdict("Supported", sup, cfg.support_threshold, "supported by")
        if ref and ref[0] >= cfg.refute_threshold:
            return self._verdict("Refuted", ref, cfg.refute_threshold, f"refuted ({ref[2]}) by")
        return Verdict(
            "Uncertain",
            evidence_ids=checked,
            confidence=round(1.0 - top, 4),
            rationale=f"no premise in {len(checked)} passages supports or contradicts it (best similarity {top:.2f})",
            verifier=self.version,
        )

    def _verdict(self, label: str, hit: tuple[float, _Premise, str], threshold: float, how: str) -> Verdict:
        sim, pr, _ = hit
        conf = 0.5 + 0.5 * min(1.0, (sim - threshold) / max(1e-9, 1.0 - threshold))
        return Verdict(
            label,
            evidence_ids=[pr.passage.id],
            confidence=round(conf, 4),
            rationale=f'{how} "{pr.text[:200]}" ({pr.passage.id}, similarity {sim:.2f})',
            verifier=self.version,
        )


# --- LLM verifier -------------------------------------------------------------------------------

SYSTEM = (
    "You are a meticulous clinical fact-checker. You judge one claim at a time strictly against the "
    "evidence passages you are given, never against your own knowledge. Answer with one JSON object."
)

USER = """# Claim
{claim}

# Evidence passages
{passages}

# Instructions
Label the claim:
- "Supported": the passages state the claim or directly imply it (paraphrases count; doses, thresholds, units and populations must match).
- "Refuted": the passages contradict it (opposite recommendation, a different dose, threshold, frequency or population).
- "Uncertain": the passages do not settle it either way.
Cite the ids of the passages your label rests on (at least one for Supported or Refuted; only ids shown above).
Return JSON only: {{"label": "Supported" | "Refuted" | "Uncertain", "evidence_ids": ["<id>", ...], "rationale": "<one or two sentences>"}}"""


def format_passages(passages: Sequence[Passage]) -> str:
    """Each passage as "[id] title — section" then its text; the ids are what the model cites."""
    blocks = []
    for p in passages:
        where = " — ".join(x for x in (p.title, p.section.replace("_", " ")) if x)
        blocks.append(f"[{p.id}] {where}\n{p.text}".rstrip())
    return "\n\n".join(blocks)


def verify_messages(claim: str, passages: Sequence[Passage]) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER.format(claim=claim, passages=format_passages(passages))},
    ]


def make_validator(shown_ids: Sequence[str]):
    """Schema check of the verifier's JSON for one claim; ValueError makes the client re-ask."""
    allowed = set(shown_ids)

    def validate(data: dict) -> dict:
        label = data.get("label")
        match = [lab for lab in LABELS if isinstance(label, str) and lab.lower() == label.strip().lower()]
        if not match:
            raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
        ids = data.get("evidence_ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"evidence_ids must be a list of passage id strings, got {ids!r}")
        unknown = [i for i in ids if i not in allowed]
        if unknown:
            raise ValueError(f"evidence_ids {unknown} were not among the passages shown: {sorted(allowed)}")
        if match[0] != "Uncertain" and not ids:
            raise ValueError(f"a {match[0]} label must cite at least one passage id in evidence_ids")
        return {
            "label": match[0],
            "evidence_ids": list(dict.fromkeys(ids)),
            "rationale": str(data.get("rationale", "")),
        }

    return validate


class OpenAIVerifier:
    """LLM verdicts over retrieved passages, through `AsyncLLMClient` (retries, re-asks, cache).
    Verdict confidence is 1.0: the model's label carries no calibrated probability."""

    name = "openai"

    def __init__(self, retriever: Retriever, cfg: LLMConfig, *, k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1 passages, got {k}")
        if cfg.template_version == "v1":  # tie the client's answer cache to this file's prompt
            cfg = dataclasses.replace(cfg, template_version=PROMPT_VERSION)
        self.retriever, self.cfg, self.k = retriever, cfg, k
        self.client = AsyncLLMClient(cfg)
        self.version = f"openai-{cfg.model}-{cfg.template_version}-k{k}+{retriever.version}"

    async def verify(self, claims: list[str]) -> list[Verdict]:
        if isinstance(claims, str) or not all(isinstance(c, str) for c in claims):
            raise ValueError("verify() takes a list of claim strings; wrap a single claim as [claim]")
        if not claims:
            return []
        hits = await asyncio.to_thread(self.retriever.search_many, list(claims), self.k)
        results = await asyncio.gather(
            *(self._one(c, [p for p, _ in h]) for c, h in zip(claims, hits, strict=True))
        )
        failed = [(i, err) for i, (_, err) in enumerate(results) if err]
        verdicts = [v for v, _ in results]
        if failed:
            raise VerificationError(
                f"{len(failed)} of {len(claims)} claims failed, first: claim {failed[0][0]}: {failed[0][1]}",
                verdicts,
            )
        return verdicts  # type: ignore[return-value]

    async def _one(self, claim: str, passages: list[Passage]) -> tuple[Verdict | None, str]:
        if not passages:  # nothing to judge against: no model call can do better than Uncertain
            return Verdict(
                "Uncertain", rationale="no evidence retrieved", confidence=1.0, verifier=self.version
            ), ""
        ids = [p.id for p in passages]
        r = await self.client.chat_json(verify_messages(claim, passages), make_validator(ids))
        if not r.ok:
            return None, r.error or "unknown error"
        assert r.data is not None
        d = r.data
        return Verdict(d["label"], d["evidence_ids"], 1.0, d["rationale"], verifier=self.version), ""

    async def aclose(self) -> None:
        await self.client.aclose()
