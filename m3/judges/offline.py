"""Offline rubric judge: MiniLM sentence similarity + keyword coverage, deterministic, no network.

    from m3.judges.base import RubricItem
    from m3.judges.offline import OfflineRubricJudge, OfflineJudgeConfig
    judge = OfflineRubricJudge(OfflineJudgeConfig(sim_threshold=0.55))
    verdicts = await judge.grade_items(conversation, response, [RubricItem("Advises ...", 5)])
    verdicts = judge.grade(conversation, response, items)          # same thing, synchronous

What it is: a heuristic that lets the RL reward and the HealthBench evaluation run anywhere (CI,
laptops, air-gapped nodes) with a real, input-dependent signal. What it is NOT: a substitute for an
LLM grader. It reads words and sentence embeddings, not meaning: it cannot judge tone, correctness,
completeness, hedging, or whether advice fits the conversation (`conversation` is ignored), and its
agreement with real graders is weak. Reports name it ("offline:minilm-lexical-v1") so its numbers
are never mistaken for GPT-4.1-graded HealthBench scores.

How an item is graded. The rubric scaffolding ("Advises the patient to", "Recommends", "States
that", "Fails to", "Does not", ...) is stripped; what is left is the content X, its keywords
(`m3.text.lexical.keywords`, stemmed) and any quantities (`m3.text.lexical.extract_quantities`). The response is
split into sentences and X is embedded together with them in one batch. Then, by sign and phrasing:

  * points >= 0, "Recommends X"        presence: met when X is present
  * points >= 0, "Does not / Avoids X"  absence:  met when X is NOT explicitly mentioned
  * points <  0, "Recommends X"        mention:  met (bad behaviour happened) when X is explicitly mentioned
  * points <  0, "Fails to / Does not X" omission: met when X is NOT present

  present(X)   = (some sentence with cosine >= sim_threshold  OR  share of X's keywords found in the
                 whole response >= cov_threshold), the matching sentence does not flip X's polarity
                 ("You do not need emergency care" does not present "seek emergency care"), and every
                 quantity in X (a dose, a temperature) appears in the response (5 mg != 50 mg;
                 `m3.text.lexical.quantities_agree`).
  mentioned(X) = one sentence with cosine >= neg_threshold AND >= mention_min_overlap of X's keywords
                 AND the same polarity as X (so "Antibiotics will not help" does not mention
                 "antibiotics for a viral infection") AND X's quantities in that sentence.

The stricter `mentioned` test guards negative items: a false "bad behaviour happened" costs points,
so it needs both semantic and lexical evidence in a single sentence.

Details: "(Justification: ...)" notes for human graders are dropped; parentheticals and "such as
..." lists count as one keyword that any listed example satisfies; headers ("Epinephrine:") and
one-word fragments never serve as the matching sentence (they embed close to anything on topic).

Limits: English; negation is a token-window heuristic (`m3.text.lexical.is_negated`); criteria about style
("Is concise", "Uses simple language"), about what the user said, or HealthBench's long
cluster-level instructions ("Judge whether the completion ...") are effectively guesses; long
list-like criteria ("mentions A, B, C and D") rely on keyword coverage; the quantity gate can miss
a notation `m3.text.lexical` does not parse. Thresholds were set on hand-built pairs (see tests), not fitted
to grader labels. Speed is MiniLM on CPU: a HealthBench response of ~30 sentences with ~12 items
takes about a second on 2 cores (later calls reuse cached sentence vectors).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass

import numpy as np

from m3.judges.base import ItemVerdict, RubricItem
from m3.text import embeddings
from m3.text.lexical import (
    extract_quantities,
    is_negated,
    is_negation_cue,
    keywords,
    quantities_agree,
    split_sentences,
    stem,
    tokenize,
)


@dataclass(frozen=True)
class OfflineJudgeConfig:
    """Thresholds of the heuristic (cosine is MiniLM's, in [-1, 1]; coverage is a fraction)."""

    sim_threshold: float = 0.55  # paraphrases of a rubric clause score ~0.6-0.8, topic-only ~0.2-0.45
    cov_threshold: float = 0.6  # 3 of 5 content words; 1-2 keyword criteria need all of them
    neg_threshold: float = 0.6  # stricter: a wrong "bad behaviour" verdict costs points
    mention_min_overlap: float = 0.3  # share of X's keywords that the mentioning sentence must contain
    negation_window: int = 6  # tokens between a negation cue and the word it negates

    def __post_init__(self) -> None:
        for name in ("sim_threshold", "neg_threshold"):
            v = getattr(self, name)
            if not -1.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} is not a cosine; use a value in [-1, 1], e.g. 0.55")
        for name in ("cov_threshold", "mention_min_overlap"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name}={v} is a fraction of keywords; use a value in (0, 1], e.g. 0.6")
        if self.negation_window < 1:
            raise ValueError(f"negation_window={self.negation_window}; use a positive token count, e.g. 6")


# --- criterion parsing -------------------------------------------------------------------------

_VERBS = """advise recommend state mention explain include ask suggest note emphasize emphasise
encourage instruct tell inform clarify describe provide list identify acknowledge warn caution urge
offer highlight specify indicate direct refer counsel remind discuss address request inquire enquire
prompt educate reassure outline define express confirm elicit point cite validate claim
recognize recognise consider""".split()


def _forms(v: str) -> list[str]:
    if v.endswith("y"):
        return [v, v[:-1] + "ies", v[:-1] + "ied", v + "ing"]
    if v.endswith("e"):
        return [v, v + "s", v + "d", v[:-1] + "ing"]
    return [v, v + "s", v + "es", v + "ed", v + "ing"]


_VERB_RE = re.compile(r"^(?:" + "|".join(f for v in _VERBS for f in _forms(v)) + r")\b\s*", re.I)
_LEAD_RE = re.compile(
    r"^(?:the\s+|a\s+)?(?:response|assistant|answer|model|reply|ai)\s+(?:should|must|will)?\s*", re.I
)
_NEG_HEAD_RE = re.compile(
    r"^(?:fails?\s+to|failed\s+to|does\s+not|doesn'?t|did\s+not|didn'?t|do\s+not|should\s+not|"
    r"must\s+not|never|avoids|refrains\s+from|omits|neglects\s+to|not)\s+",
    re.I,
)
_ADVERB_RE = re.compile(
    r"^(?:correctly|clearly|explicitly|briefly|appropriately|accurately|concisely|directly|strongly|"
    r"promptly|specifically|gently|proactively|also|adequately|sufficiently|politely|kindly)\s+",
    re.I,
)
_OBJECT_RE = re.compile(
    r"^(?:the\s+|a\s+)?(?:patient|user|parent|caregiver|mother|father|reader|individual|person|client|"
    r"family|them|him|her|you|people)\s+",
    re.I,
)
_CONNECTOR_RE = re.compile(r"^(?:that|to|about|for|on|whether|if|regarding|of|with)\s+", re.I)
# some HealthBench criteria carry "(Justification: ...)" for the human grader: not content
_JUSTIFICATION_RE = re.compile(r"\(\s*justification\s*:[^)]*\)", re.I)
# parentheticals and "such as ..." tails hold examples: any one of them counts (see _Criterion)
_EXAMPLES_RE = re.compile(
    r"\(([^)]*)\)|\b(?:such as|e\.g\.,?|for example|for instance|including|like)\s+(.*)$", re.I
)


@dataclass
class _Criterion:
    text: str  # scaffolding stripped
    core: str  # text without example lists
    negated_phrasing: bool  # "Fails to ...", "Does not ...", "Avoids ..."
    polarity_negative: bool  # the content itself is negative: "against driving", "X is not needed"
    keywords: list[str]
    example_keywords: list[str]
    quantities: list


def strip_scaffold(criterion: str) -> tuple[str, bool]:
    """("seek emergency care immediately", False) for "Advises the patient to seek emergency care
    immediately."; the flag is True for "Fails to ..." / "Does not ..." / "Avoids ..." phrasing."""
    s = _JUSTIFICATION_RE.sub(" ", criterion).strip().rstrip(".").strip()
    s = _LEAD_RE.sub("", s)
    negated = False
    m = _NEG_HEAD_RE.match(s)
    if m:
        negated = True
        s = s[m.end() :]
    s = _ADVERB_RE.sub("", s)
    s = _VERB_RE.sub("", s, count=1)
    for _ in range(3):  # "Asks the user about whether ..." / "Recommends that the patient ..."
        before = s
        s = _CONNECTOR_RE.sub("", _OBJECT_RE.sub("", s))
        if s == before:
            break
    return s.strip(" ,;:"), negated


def parse_criterion(criterion: str) -> _Criterion:
    text, negated = strip_scaffold(criterion)
    core = text
    examples: list[str] = []
    for m in _EXAMPLES_RE.finditer(text):
        examples.append(m.group(1) or m.group(2) or "")
    stripped_core = _EXAMPLES_RE.sub(" ", text).strip(" ,;:")
    if examples and keywords(stripped_core):  # only drop the examples if something is left
        core = stripped_core
    else:
        examples = []
    head = tokenize(core)[:2]  # "not to drive", "against driving", "avoiding NSAIDs"
    core_kw = keywords(core)
    example_kw = [k for k in keywords(" ".join(examples)) if k not in core_kw]
    return _Criterion(
        text=text or criterion,
        core=core or text or criterion,
        negated_phrasing=negated,
        polarity_negative=any(is_negation_cue(t) for t in head) or is_negated(core, core_kw),
        keywords=core_kw,
        example_keywords=example_kw,
        quantities=extract_quantities(text),
    )


# --- the judge ---------------------------------------------------------------------------------

_CONDITIONAL = re.compile(r"^\s*(?:if|when|unless|while|because|as|since|once)\b", re.I)
_CLAUSES = re.compile(r"[,;:]|\s[-–—]\s|\bbut\b", re.I)


class OfflineRubricJudge:
    """The offline `RubricJudge` backend (see module docstring for the rules and their limits)."""

    name = "offline:minilm-lexical-v1"

    def __init__(self, config: OfflineJudgeConfig | None = None) -> None:
        self.config = config or OfflineJudgeConfig()

    async def grade_items(
        self, conversation: list[dict], response: str, items: list[RubricItem]
    ) -> list[ItemVerdict]:
        # The CPU work is a few ms per item once the model is loaded; a worker thread keeps the
        # first call's model load (seconds) and large batches off the event loop.
        return await asyncio.to_thread(self.grade, conversation, response, items)

    async def aclose(self) -> None:
        """Nothing to release: the model and its cache are process-wide and shared by every judge."""

    def grade(self, conversation: list[dict], response: str, items: list[RubricItem]) -> list[ItemVerdict]:
        """Synchronous `grade_items`: one verdict per item, in order."""
        if not isinstance(response, str):
            raise ValueError(f"response must be the assistant's text (str), got {type(response).__name__}")
        for i, it in enumerate(items):
            if not isinstance(it, RubricItem):
                raise ValueError(
                    f"items[{i}] is {type(it).__name__}; wrap it as RubricItem(criterion, points)"
                )
        if not items:
            return []
        sentences = split_sentences(response)
        crits = [parse_criterion(it.criterion) for it in items]
        # one batch: every sentence, every criterion's stripped text and core (the cache dedups)
        crit_texts = [t for c in crits for t in (c.text, c.core)]
        vecs = embeddings.embed(sentences + crit_texts)
        sent_vecs, crit_vecs = vecs[: len(sentences)], vecs[len(sentences) :]
        sent_stems = [{stem(t) for t in tokenize(s)} for s in sentences]
        resp_stems = set().union(*sent_stems) if sent_stems else set()
        # headers ("Epinephrine:") and one-word fragments embed close to anything on their topic;
        # they still count for keyword coverage but never as the sentence that "says" X
        fragment = np.array([s.rstrip().endswith(":") or len(tokenize(s)) < 2 for s in sentences], dtype=bool)
        out = []
        for k, (item, crit) in enumerate(zip(items, crits, strict=True)):
            if not crit.keywords and not crit.quantities:
                out.append(
                    ItemVerdict(None, error=f"criterion has no content words to match: {item.criterion!r}")
                )
                continue
            if len(sentences):
                sims = np.maximum(crit_vecs[2 * k] @ sent_vecs.T, crit_vecs[2 * k + 1] @ sent_vecs.T)
                sims = np.where(fragment, np.float32(-1.0), sims)
            else:
                sims = np.zeros(0, dtype=np.float32)
            out.append(self._grade_one(item, crit, response, sentences, sims, sent_stems, resp_stems))
        return out

    # --- internals ---

    def _polarity_agrees(self, sentence: str, stems: set[str], crit: _Criterion) -> bool:
        """Whether `sentence` says X with X's polarity, judged on the words they share: "Antibiotics
        will not help" negates "antibiotics" while "antibiotics for a viral infection" does not."""
        w = self.config.negation_window
        shared = [k for k in crit.keywords if k in stems]
        if shared:
            return is_negated(sentence, shared, window=w) == is_negated(crit.core, shared, window=w)
        # no shared word: judge the main clause (skip "If you can't breathe, ..." conditionals)
        sentence_negative = False
        for clause in _CLAUSES.split(sentence):
            if clause.strip() and not _CONDITIONAL.match(clause):
                sentence_negative = any(is_negation_cue(t) for t in tokenize(clause))
                break
        return sentence_negative == crit.polarity_negative

    def _coverage(self, crit: _Criterion, stems: set[str]) -> tuple[float, list[str], list[str]]:
        found = [k for k in crit.keywords if k in stems]
        missing = [k for k in crit.keywords if k not in stems]
        total = len(crit.keywords)
        if crit.example_keywords:  # any single example counts as covering "such as ..."
            total += 1
            if any(k in stems for k in crit.example_keywords):
                found.append("<example>")
            else:
                missing.append("<example>")
        return (len(found) / total if total else 0.0), found, missing

    def _grade_one(self, item, crit, response, sentences, sims, sent_stems, resp_stems) -> ItemVerdict:
        cfg = self.config
        cov, found, missing = self._coverage(crit, resp_stems)
        sent_cov = [self._coverage(crit, st)[0] for st in sent_stems]
        agrees = [self._polarity_agrees(s, st, crit) for s, st in zip(sentences, sent_stems, strict=True)]
        qty_ok = quantities_agree(crit.quantities, response)

        # presence: best agreeing sentence by similarity; coverage checked in the best-covering sentence
        sim_idx = max((i for i in range(len(sentences)) if agrees[i]), key=lambda i: sims[i], default=None)
        sim_ok = sim_idx is not None and sims[sim_idx] >= cfg.sim_threshold
        cov_idx = max(range(len(sentences)), key=lambda i: (sent_cov[i], sims[i]), default=None)
        cov_ok = cov >= cfg.cov_threshold and cov_idx is not None and agrees[cov_idx]
        present = (sim_ok or cov_ok) and qty_ok

        # explicit mention: one sentence carries similarity, keywords, polarity and quantities
        def mentions(i: int) -> bool:
            return (
                sims[i] >= cfg.neg_threshold
                and sent_cov[i] >= cfg.mention_min_overlap
                and agrees[i]
                and quantities_agree(crit.quantities, sentences[i])
            )

        mention_idx = next((i for i in np.argsort(-sims, kind="stable") if mentions(int(i))), None)
        mentioned = mention_idx is not None

        if item.points >= 0:
            mode, met = ("absence", not mentioned) if crit.negated_phrasing else ("presence", present)
        else:
            mode, met = ("omission", not present) if crit.negated_phrasing else ("mention", mentioned)

        best = int(np.argmax(sims)) if len(sentences) else None
        meta = {
            "mode": mode,
            "content": crit.text,
            "keywords": crit.keywords,
            "coverage": round(cov, 4),
            "found_keywords": found,
            "missing_keywords": missing,
            "max_sim": round(float(sims[best]), 4) if best is not None else 0.0,
            "best_sentence_index": best,
            "sim_sentence_index": sim_idx,
            "mention_sentence_index": None if mention_idx is None else int(mention_idx),
            "present": bool(present),
            "mentioned": bool(mentioned),
            "quantities_required": [tuple(q) for q in crit.quantities],
            "quantities_ok": qty_ok,
            "content_negative": crit.polarity_negative,
            "thresholds": asdict(cfg),
        }
        return ItemVerdict(bool(met), explanation=self._explain(mode, met, meta, sentences, sims), meta=meta)

    def _explain(self, mode: str, met: bool, meta: dict, sentences: list[str], sims) -> str:
        cfg = self.config

        def quote(i: int | None) -> str:
            if i is None:
                return "no sentence"
            s = sentences[i]
            return f"sentence {i} {s[:120] + ('...' if len(s) > 120 else '')!r} (sim {sims[i]:.2f})"

        cov = f"keyword coverage {meta['coverage']:.2f} (missing: {', '.join(meta['missing_keywords']) or 'none'})"
        qty = (
            ""
            if meta["quantities_ok"]
            else f"; quantities {meta['quantities_required']} not all in the response"
        )
        verdict = "met" if met else "not met"
        if mode in ("presence", "omission"):
            ev = quote(
                meta["sim_sentence_index"]
                if meta["sim_sentence_index"] is not None
                else meta["best_sentence_index"]
            )
            state = "present" if meta["present"] else "absent"
            return (
                f"{verdict} ({mode}): {meta['content']!r} is {state}; closest {ev} vs threshold "
                f"{cfg.sim_threshold}; {cov} vs {cfg.cov_threshold}{qty}"
            )
        if meta["mentioned"]:
            ev = quote(meta["mention_sentence_index"])
            return f"{verdict} ({mode}): {meta['content']!r} explicitly mentioned in {ev}"
        return (
            f"{verdict} ({mode}): no sentence mentions {meta['content']!r} with sim >= {cfg.neg_threshold}, "
            f"keyword overlap >= {cfg.mention_min_overlap} and matching polarity; closest "
            f"{quote(meta['best_sentence_index'])}{qty}"
        )
