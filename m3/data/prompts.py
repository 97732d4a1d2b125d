"""The three domains' prompt rows in verl's parquet schema, and where each domain's prompts come from.

Every consumer takes its prompts here: stage 1 RL, stage 2 teacher rollouts, stage 3 MOPD, the
Eagle3 draft's training data and the W4 calibration set, so the data paths live in one place
(`SOURCES`) and "n prompts of a domain from an offset" has one implementation (`domain_rows`):

    from m3.data.prompts import domain_rows
    rows = domain_rows("healthcare", n=4, offset=8)      # HealthBench records 8..11 as rows
    rows = domain_rows("inquiry", n=2, max_inquiry_turns=3, source="my_cases.jsonl")

`python -m stage1_expert_rl.data` writes the stage-1 parquet files.

Row schema (verl's RLHFDataset columns; one parquet per expert):
    prompt        list of {"role", "content"} chat messages
    data_source   "m3_inquiry" | "m3_healthcare" | "m3_general"  (routes the reward function)
    ability       "clinical_inquiry" | "healthcare" | "instruction_following"
    reward_model  {"style": "rule" | "model", "ground_truth": str}
    extra_info    dict, per expert:
        inquiry     {"case": JSON string of ClinicalCase.to_dict(), "case_id", "stages": the four
                     stages, "seed", "interruption": null | "mid_turn" | "end_of_turn", "index"};
                     read by the "m3_consultation" agent loop
        healthcare  {"rubrics": [{"criterion", "points", "tags"}], "prompt": the conversation,
                     "prompt_id", "index"}
        general     {"constraints": JSON string of [{"type", "value"?}], "prompt_id", "index"}
    agent_name    "m3_consultation" for inquiry rows, "single_turn_agent" otherwise

Why JSON strings for `case` and `constraints`: Arrow gives every field one type across all rows, and
a case (nested, optional fields) or a constraint `value` (int in one item, list in the next) does
not fit one struct type; `json.loads` restores them exactly (`constraints_of` does it).

General-expert constraint types (`CONSTRAINT_TYPES`): max_words (int), include_keywords (list of
str), num_bullets (int; lines starting with "- " or "* "), lowercase, json_format, ends_with (str).
No instruction-following dataset is reachable offline, so `generate_general` builds prompts from
medical-flavoured templates, deterministic by seed; a user JSONL ({"prompt": str, "constraints":
[...], "prompt_id"?: str} per line) replaces it.

The data hash is the sha256 of the rows as canonical JSON lines (sorted keys), so it does not depend
on the parquet writer's version and is the same for the same rows on every machine.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from m3.clinic.episode import EpisodeConfig, plan_interruptions, start
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.transcript import STAGES
from m3.config import REPO_ROOT

EXPERTS = DOMAINS = ("inquiry", "healthcare", "general")
# Each domain's default prompt source: the real data shipped in data/ (data/README.md); general
# prompts are generated (no instruction-following dataset is reachable offline).
SOURCES: dict[str, Path | None] = {
    "inquiry": REPO_ROOT / "data" / "agentclinic_medqa.jsonl",
    "healthcare": REPO_ROOT / "data" / "healthbench_sample30.jsonl",
    "general": None,
}
DATA_SOURCES = {"inquiry": "m3_inquiry", "healthcare": "m3_healthcare", "general": "m3_general"}
CONSULTATION_AGENT = "m3_consultation"
SINGLE_TURN_AGENT = "single_turn_agent"  # verl's default agent loop for one-turn prompts
CONSTRAINT_TYPES = {  # type -> kind of its value (None: the constraint takes no value)
    "max_words": "int",
    "include_keywords": "keywords",
    "num_bullets": "int",
    "lowercase": None,
    "json_format": None,
    "ends_with": "str",
}


# --- inquiry ---------------------------------------------------------------------------------------
def inquiry_rows(cases: list, seed: int = 0) -> list[dict]:
    """One consultation row per case; the prompt is x_1 (system + inquiry instruction with the
    patient's opening), kept for verl's length filter although the agent loop rebuilds it. Each row
    carries its interruption plan, drawn over these cases (m3.clinic.episode.plan_interruptions)."""
    patient = PatientSimulator()  # offline: the opening is a template, no model is loaded
    plan = plan_interruptions([c.case_id for c in cases], EpisodeConfig(), seed)
    rows = []
    for i, case in enumerate(cases):
        prompt = start(case, patient, EpisodeConfig()).doctor_messages()
        rows.append(
            {
                "prompt": prompt,
                "data_source": DATA_SOURCES["inquiry"],
                "ability": "clinical_inquiry",
                "reward_model": {"style": "rule", "ground_truth": case.diagnosis.text},
                "extra_info": {
                    "case": json.dumps(case.to_dict(), ensure_ascii=False, sort_keys=True),
                    "case_id": case.case_id,
                    "stages": list(STAGES),
                    "seed": seed,
                    "interruption": plan[case.case_id],
                    "index": i,
                },
                "agent_name": CONSULTATION_AGENT,
            }
        )
    return rows


# --- healthcare ------------------------------------------------------------------------------------
def healthcare_rows(examples: list) -> list[dict]:
    """One row per HealthBench-format example; the rubric is the (model-judged) ground truth."""
    rows = []
    for i, ex in enumerate(examples):
        rubrics = [
            {"criterion": r.criterion, "points": float(r.points), "tags": list(r.tags)} for r in ex.rubrics
        ]
        prompt = [{"role": m["role"], "content": m["content"]} for m in ex.prompt]
        rows.append(
            {
                "prompt": prompt,
                "data_source": DATA_SOURCES["healthcare"],
                "ability": "healthcare",
                "reward_model": {"style": "model", "ground_truth": json.dumps(rubrics, ensure_ascii=False)},
                "extra_info": {"rubrics": rubrics, "prompt": prompt, "prompt_id": ex.prompt_id, "index": i},
                "agent_name": SINGLE_TURN_AGENT,
            }
        )
    return rows


# --- general ---------------------------------------------------------------------------------------
def validate_constraints(raw: object, where: str) -> list[dict]:
    """Check a constraint list; errors read "WHERE: field 'constraints[i].value' ... (fix)"."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: field 'constraints' must be a non-empty list of {{type, value}} objects")
    out = []
    for i, c in enumerate(raw):
        fld = f"constraints[{i}]"
        if not isinstance(c, dict) or c.get("type") not in CONSTRAINT_TYPES:
            raise ValueError(
                f"{where}: field '{fld}.type' is {c.get('type') if isinstance(c, dict) else c!r}; "
                f"use one of {sorted(CONSTRAINT_TYPES)}"
            )
        kind, value = CONSTRAINT_TYPES[c["type"]], c.get("value")
        ok = (
            (kind is None and value is None)
            or (kind == "int" and isinstance(value, int) and not isinstance(value, bool) and value > 0)
            or (kind == "str" and isinstance(value, str) and value.strip() != "")
            or (
                kind == "keywords"
                and isinstance(value, list)
                and value
                and all(isinstance(k, str) and k for k in value)
            )
        )
        if not ok:
            want = {None: "no value", "int": "a positive integer", "str": "a non-empty string",
                    "keywords": "a non-empty list of strings"}[kind]  # fmt: skip
            raise ValueError(f"{where}: field '{fld}.value' is {value!r}; '{c['type']}' takes {want}")
        out.append({"type": c["type"]} if kind is None else {"type": c["type"], "value": value})
    return out


def constraints_of(extra_info: dict) -> list[dict]:
    """The constraint list of a general row's extra_info (stored as a JSON string; a list is accepted)."""
    raw = extra_info["constraints"]
    return json.loads(raw) if isinstance(raw, str) else list(raw)


def constraint_instruction(c: dict) -> str:
    """The sentence that states constraint `c` in the prompt."""
    t, v = c["type"], c.get("value")
    if t == "max_words":
        return f"Answer in at most {v} words."
    if t == "include_keywords":
        return "Include the words " + ", ".join(f'"{k}"' for k in v) + "."
    if t == "num_bullets":
        return f'Answer with exactly {v} bullet points, each on its own line starting with "- ".'
    if t == "lowercase":
        return "Write your entire answer in lowercase letters; no capital letters at all."
    if t == "json_format":
        return "Wrap your entire answer in valid JSON; no text outside the JSON object."
    if t == "ends_with":
        return f'End your answer with the exact phrase "{v}" and nothing after it.'
    raise ValueError(f"unknown constraint type {t!r}; use one of {sorted(CONSTRAINT_TYPES)}")


_TOPICS = ("type 2 diabetes", "high blood pressure", "asthma", "migraine", "iron-deficiency anaemia",
           "seasonal influenza", "lower back pain", "insomnia", "urinary tract infection", "eczema",
           "hypothyroidism", "gout", "acid reflux", "osteoporosis", "sprained ankle", "dehydration")  # fmt: skip
_TASKS = ("Explain {topic} to a patient who has just been diagnosed.",
          "Describe the common symptoms of {topic}.",
          "Give lifestyle advice for someone living with {topic}.",
          "Summarise when a person with {topic} should see a doctor urgently.",
          "Write a short note for a pharmacy leaflet about {topic}.",
          "Explain how {topic} is usually diagnosed.")  # fmt: skip
_KEYWORDS = ("doctor", "symptoms", "treatment", "rest", "water", "exercise", "diet", "follow-up")
_ENDINGS = ("Stay well.", "Ask your doctor if unsure.", "Thank you for reading.")
# json_format excludes bullets and a closing phrase (a JSON object cannot end with free text)
_EXCLUSIVE = {("json_format", "num_bullets"), ("json_format", "ends_with")}


def _random_constraint(t: str, rng: random.Random, lower: bool) -> dict:
    if t == "max_words":
        return {"type": t, "value": rng.choice((30, 50, 80, 120))}
    if t == "num_bullets":
        return {"type": t, "value": rng.randint(2, 5)}
    if t == "include_keywords":
        return {"type": t, "value": sorted(rng.sample(_KEYWORDS, rng.randint(1, 3)))}
    if t == "ends_with":
        end = rng.choice(_ENDINGS)
        return {"type": t, "value": end.lower() if lower else end}
    return {"type": t}


def generate_general(n: int, seed: int = 0, max_constraints: int = 3) -> list[dict]:
    """`n` prompts {"prompt_id", "prompt", "constraints"} with 1..max_constraints compatible
    constraints each; the same (n, seed) gives the same list."""
    if n < 1 or max_constraints < 1:
        raise ValueError(
            f"generate_general needs n >= 1 and max_constraints >= 1, got {n}, {max_constraints}"
        )
    rng = random.Random(seed)
    items = []
    for i in range(n):
        task = rng.choice(_TASKS).format(topic=rng.choice(_TOPICS))
        types: list[str] = []
        for t in rng.sample(sorted(CONSTRAINT_TYPES), len(CONSTRAINT_TYPES)):
            if len(types) < rng.randint(1, max_constraints) and not any(
                (t, u) in _EXCLUSIVE or (u, t) in _EXCLUSIVE for u in types
            ):
                types.append(t)
        lower = "lowercase" in types
        constraints = [_random_constraint(t, rng, lower) for t in sorted(types)]
        text = " ".join([task, *(constraint_instruction(c) for c in constraints)])
        items.append({"prompt_id": f"general-{seed}-{i:06d}", "prompt": text, "constraints": constraints})
    return items


def load_general(path: str | Path) -> list[dict]:
    """Read a user JSONL of {"prompt": str, "constraints": [...], "prompt_id"?: str}; every bad line
    raises ValueError "FILE:LINE: field '...' ..."."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path}: no such file; pass a JSONL of {{prompt, constraints}} objects or omit --input"
        )
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}); one object per line"
            ) from e
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise ValueError(f"{where}: field 'prompt' must be a non-empty string (the user instruction)")
        pid = obj.get("prompt_id", f"{path.stem}-{lineno:06d}")
        if not isinstance(pid, str):
            raise ValueError(f"{where}: field 'prompt_id' must be a string, got {pid!r}")
        items.append(
            {
                "prompt_id": pid,
                "prompt": obj["prompt"],
                "constraints": validate_constraints(obj.get("constraints"), where),
            }
        )
    return items


def general_rows(items: list[dict]) -> list[dict]:
    """One single-turn row per {"prompt_id", "prompt", "constraints"} item."""
    rows = []
    for i, item in enumerate(items):
        constraints = json.dumps(validate_constraints(item["constraints"], item["prompt_id"]), sort_keys=True)
        rows.append(
            {
                "prompt": [{"role": "user", "content": item["prompt"]}],
                "data_source": DATA_SOURCES["general"],
                "ability": "instruction_following",
                "reward_model": {"style": "rule", "ground_truth": constraints},
                "extra_info": {"constraints": constraints, "prompt_id": item["prompt_id"], "index": i},
                "agent_name": SINGLE_TURN_AGENT,
            }
        )
    return rows


# --- one domain --------------------------------------------------------------------------------------
def domain_rows(
    domain: str,
    n: int | None,
    offset: int = 0,
    *,
    source: str | Path | None = None,
    seed: int = 0,
    max_inquiry_turns: int | None = None,
) -> list[dict]:
    """Rows offset..offset+n of one domain (all from `offset` on when n is None), in input order.

    source: a file replacing the domain's default (`SOURCES`): cases JSONL (inquiry), HealthBench
    JSONL (healthcare), or a general-prompt JSONL (general; None generates n prompts by `seed`).
    max_inquiry_turns: cap the inquiry stage of consultation rows (short consultations on CPU).
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if n is not None and n < 0 or offset < 0:
        raise ValueError(f"n and offset must be >= 0, got n={n}, offset={offset}")
    end = None if n is None else offset + n
    path = source if source is not None else SOURCES[domain]
    if domain == "inquiry":
        from m3.clinic.case_files import load_cases

        rows = inquiry_rows(load_cases(path)[offset:end], seed)
        if max_inquiry_turns is not None:
            for r in rows:
                r["extra_info"]["episode"] = {"max_inquiry_turns": max_inquiry_turns}
    elif domain == "healthcare":
        from m3.data.healthbench import load_examples

        rows = healthcare_rows(load_examples(str(path))[offset:end])
    elif path is not None:
        rows = general_rows(load_general(path)[offset:end])
    else:
        if end is None:
            raise ValueError("generated general prompts need a count: pass n")
        rows = general_rows(generate_general(end, seed=seed)[offset:])
    if n is not None and len(rows) < n:
        raise ValueError(
            f"{domain}: asked for {n} prompts from offset {offset}, the source {path or 'generator'} "
            f"has {len(rows)} there; lower the count or pass a larger source"
        )
    return rows


def row_id(row: dict) -> str:
    """The case or prompt id of a row (what evidence and calibration records cite)."""
    info = row.get("extra_info") or {}
    return str(info.get("case_id") or info.get("prompt_id") or "")


def domain_of(row: dict) -> str:
    """The domain a row belongs to, from its data_source."""
    for d, source in DATA_SOURCES.items():
        if row["data_source"] == source:
            return d
    raise ValueError(f"data_source {row['data_source']!r} is none of {sorted(DATA_SOURCES.values())}")


# --- files -----------------------------------------------------------------------------------------
def split_rows(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded shuffle, val = the first round(val_fraction * n) rows (at least one
    when val_fraction > 0 and there are two rows or more); both keep the input order."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(rows))
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(rows) >= 2 else 0), max(len(rows) - 1, 0))
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def data_hash(rows: list[dict]) -> str:
    """sha256 of the rows as canonical JSON lines (see the module docstring)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def write_parquet(rows: list[dict], path: str | Path) -> str:
    """Write `rows` as parquet with `datasets` (parent dirs created); returns `data_hash(rows)`."""
    from datasets import Dataset

    if not rows:
        raise ValueError(f"{path}: no rows to write; check the input file or lower --val-fraction")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return data_hash(rows)
