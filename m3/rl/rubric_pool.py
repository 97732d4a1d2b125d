"""Dynamic rubric evolution for the Healthcare expert: the pool of mined rubric items, admitted when
their failure mode is frequent and retired once the policy satisfies them (the method's "mine,
verify, inject"; thresholds OPEN in the paper, knobs here).

    pool = RubricPool(DynamicRubricConfig())
    pool.add_candidates(candidates, step)          # mined and verified (m3.rl.rubric_miner)
    pool.observe(step, n_responses, failure_modes) # which failure modes the step's top responses showed
    pool.end_epoch(epoch, step, satisfaction)      # admit frequent ones, retire satisfied ones
    items = pool.items_for(prompt_text)            # the active dynamic items that apply to a prompt
    pool.save("pool.json"); RubricPool.load("pool.json")

Life of an item: candidate (mined, verified or waiting for a human decision) -> active once its
failure mode's frequency over the last `window` steps (flawed top responses / all responses)
reaches `admit_frequency` -> retired after `retire_epochs` consecutive epochs in which it was
satisfied on at least `satisfied_rate` of the responses it applied to (a positive item met, a
negative item not hit). A rare flaw never reaches the frequency and is never admitted. Every change
bumps `version` and appends an event (what, when, why, evidence response ids) to `history`.

One global pool, items scoped by keywords (decided here): the failure modes the method targets (a
refuted dose, a missing safety referral, an unsupported claim) recur across prompts, while a
prompt cluster of a few-hundred-prompt RL set sees each of them only a handful of times, too few to
reach a frequency threshold; so the pool is global and an item carries `scope`: keywords a prompt
must contain for the item to apply (empty = every prompt). Negative claim items need no scope (they
only fire when the claim is made); a positive safety item is scoped to its red flag, so an eczema
prompt is never graded on chest-pain advice; a restated core negative item is scoped to the words its
criterion shares with the prompt it came from (as keyword stems), or to every prompt when none.

Injection (eq. 1 unchanged): R_task is computed over the row's core items plus `items_for(prompt)`,
less any dynamic item equal to one of the row's core items (counted once).
Locally the trainer writes them into each row (`extra_info["dynamic_rubrics"]` and
`"rubric_pool_version"`). On a cluster the pool file lives on shared storage: the miner
(`python -m stage1_expert_rl.rubric_miner`, on the head node) reads verl's per-step rollout dumps
(`trainer.rollout_data_dir`), updates the pool and replaces the file atomically (write + rename);
every reward worker's `compute_score` gets its path (`reward_kwargs.rubric_pool`), re-reads it when
its version changes, and logs the version it scored with (`rubric_pool_version`), so each step's
rewards name the pool they used.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m3.judges.base import RubricItem
from m3.text.lexical import keywords
from m3.text.normalize import fold

STATUSES = ("candidate", "active", "retired", "rejected")


@dataclass
class DynamicRubricConfig:
    """Knobs of the evolution (OPEN in the paper; defaults chosen for RL runs of tens of steps)."""

    dynamic: bool = False  # off: the core rubric only (the static baseline)
    top_quantile: float = 0.5  # "high-scoring": R_task at or above this quantile of the step's responses
    window: int = 4  # steps over which a failure mode's frequency is measured
    admit_frequency: float = 0.15  # flawed top responses / all responses in the window
    min_support: int = 2  # and at least this many flawed responses
    satisfied_rate: float = 0.9  # an epoch in which the item held on this share of its responses
    retire_epochs: int = 2  # consecutive satisfied epochs before retirement
    merge_threshold: float = 0.88  # MiniLM cosine above which a candidate is a duplicate (merged)
    miner: str = "offline"  # offline (flaw signatures -> items) | openai (an LLM proposes items)
    verifier: str = "auto"  # auto (structural checks) | judge (a strong LLM judge) | human (review file)
    review_file: str | None = None  # verifier=human: JSONL of candidates; set "decision" to accept/reject
    max_active: int = 16  # cap on active items (the most frequent failure modes win)

    def __post_init__(self) -> None:
        if not 0.0 <= self.top_quantile < 1.0:
            raise ValueError(f"rubrics.top_quantile must lie in [0, 1), got {self.top_quantile}")
        if self.window < 1 or self.retire_epochs < 1 or self.min_support < 1 or self.max_active < 1:
            raise ValueError("rubrics.window, retire_epochs, min_support and max_active must be >= 1")
        if self.miner not in ("offline", "openai"):
            raise ValueError(f"rubrics.miner must be offline or openai, got {self.miner!r}")
        if self.verifier not in ("auto", "judge", "human"):
            raise ValueError(f"rubrics.verifier must be auto, judge or human, got {self.verifier!r}")
        if self.verifier == "human" and not self.review_file:
            raise ValueError("rubrics.verifier=human needs rubrics.review_file (a JSONL you edit)")


@dataclass
class Candidate:
    """A proposed rubric item: integer points in [-10, 10], the failure mode it targets, evidence."""

    criterion: str
    points: int
    failure_mode: str
    evidence: list[str] = field(default_factory=list)  # response ids that showed the failure
    scope: list[str] = field(default_factory=list)  # prompt keywords (empty: every prompt)
    source: str = "offline"


def validate_candidate(c: Candidate) -> str | None:
    """Why `c` cannot be a rubric item, or None: non-empty criterion, integer points in [-10, 10], not 0."""
    if not isinstance(c.criterion, str) or not c.criterion.strip():
        return "empty criterion"
    if not isinstance(c.points, int) or isinstance(c.points, bool):
        return f"points {c.points!r} are not an integer"
    if not -10 <= c.points <= 10 or c.points == 0:
        return f"points {c.points} outside [-10, 10] or zero"
    if not c.failure_mode.strip():
        return "empty failure mode"
    return None


@dataclass
class DynamicItem:
    id: str
    criterion: str
    points: int
    failure_mode: str
    scope: list[str]
    status: str = "candidate"
    verified: bool = False
    evidence: list[str] = field(default_factory=list)
    created_step: int = 0
    admitted_step: int | None = None
    retired_epoch: int | None = None
    satisfied_streak: int = 0

    def rubric_item(self) -> RubricItem:
        return RubricItem(self.criterion, float(self.points), ("dynamic", self.id))

    def applies_to(self, prompt_text: str) -> bool:
        """Global without a scope; else when the prompt has one scope entry, as a phrase (a red flag:
        "chest pain") or as a keyword stem (a restated item's topic: "antibiotic" matches "antibiotics")."""
        if not self.scope:
            return True
        text, stems = fold(prompt_text), set(keywords(prompt_text))
        return any(k in stems or re.search(rf"\b{re.escape(fold(k))}\b", text) for k in self.scope)


class RubricPool:
    def __init__(self, cfg: DynamicRubricConfig | None = None) -> None:
        self.cfg = cfg or DynamicRubricConfig()
        self.items: dict[str, DynamicItem] = {}
        self.version = 0
        self.history: list[dict] = []
        self._window: deque[tuple[int, int, dict[str, list[str]]]] = deque(maxlen=self.cfg.window)

    # --- candidates ---------------------------------------------------------------------------
    def by_failure_mode(self, mode: str) -> DynamicItem | None:
        return next((it for it in self.items.values() if it.failure_mode == mode), None)

    def add_candidates(
        self, candidates: list[Candidate], step: int, verdicts: list[bool | None] | None = None
    ) -> None:
        """Record mined candidates. `verdicts[i]`: True verified, False rejected, None pending (a human
        decision to come). A malformed candidate is rejected with its reason; one whose failure mode
        is known adds its evidence to that item (merged, not added)."""
        verdicts = verdicts if verdicts is not None else [True] * len(candidates)
        for c, ok in zip(candidates, verdicts, strict=True):
            reason = validate_candidate(c)
            if reason is not None:
                self._event("rejected", None, step, f"malformed candidate: {reason}", c.evidence, c.criterion)
                continue
            known = self.by_failure_mode(c.failure_mode)
            if known is not None:
                known.evidence = sorted(set(known.evidence) | set(c.evidence))
                if ok is not None and known.status == "candidate":
                    known.verified = known.verified or ok
                continue
            item = DynamicItem(
                id=f"d{len(self.items) + 1:03d}", criterion=c.criterion.strip(), points=c.points,
                failure_mode=c.failure_mode, scope=list(c.scope), evidence=sorted(set(c.evidence)), created_step=step,
            )  # fmt: skip
            self.items[item.id] = item
            if ok is False:
                item.status = "rejected"
                self._event("rejected", item.id, step, "the verifier rejected it", item.evidence)
            else:
                item.verified = bool(ok)

    def decide(self, item_id: str, accept: bool, step: int, why: str) -> None:
        """A verifier's (or a human's) late decision on a pending candidate."""
        item = self.items[item_id]
        if item.status != "candidate":
            return
        if accept:
            item.verified = True
        else:
            item.status = "rejected"
            self._event("rejected", item.id, step, why, item.evidence)

    # --- frequencies, admission, retirement ---------------------------------------------------
    def observe(self, step: int, n_responses: int, failure_modes: dict[str, list[str]]) -> None:
        """The step's count of responses and, per failure mode, the top responses that showed it."""
        self._window.append((step, n_responses, {k: list(v) for k, v in failure_modes.items()}))

    def frequency(self, mode: str) -> tuple[float, int]:
        """(flawed responses / responses, flawed responses) of `mode` over the window."""
        total = sum(n for _, n, _ in self._window)
        flawed = sum(len(m.get(mode, ())) for _, _, m in self._window)
        return (flawed / total if total else 0.0), flawed

    def end_epoch(self, epoch: int, step: int, satisfaction: dict[str, tuple[int, int]]) -> None:
        """Admit verified candidates whose failure mode is frequent; retire active items satisfied
        `retire_epochs` epochs in a row. satisfaction[item_id] = (responses it held on, applied to)."""
        for item in self.items.values():
            if item.status != "active":
                continue
            held, applied = satisfaction.get(item.id, (0, 0))
            if applied and held / applied >= self.cfg.satisfied_rate:
                item.satisfied_streak += 1
            elif applied:
                item.satisfied_streak = 0
            if item.satisfied_streak >= self.cfg.retire_epochs:
                item.status, item.retired_epoch = "retired", epoch
                why = f"satisfied on >= {self.cfg.satisfied_rate:.0%} of its responses for {item.satisfied_streak} epochs"
                self._event("retired", item.id, step, why, [], epoch=epoch)
        ready = []
        for item in self.items.values():
            freq, flawed = self.frequency(item.failure_mode)
            if (
                item.status == "candidate"
                and item.verified
                and freq >= self.cfg.admit_frequency
                and flawed >= self.cfg.min_support
            ):
                ready.append((freq, item))
        room = self.cfg.max_active - len(self.active())
        for freq, item in sorted(ready, key=lambda p: -p[0])[: max(room, 0)]:
            item.status, item.admitted_step, item.satisfied_streak = "active", step, 0
            why = f"failure mode {item.failure_mode!r} in {freq:.0%} of responses over the last {len(self._window)} steps"
            self._event("admitted", item.id, step, why, item.evidence, epoch=epoch)

    # --- injection ------------------------------------------------------------------------------
    def active(self) -> list[DynamicItem]:
        return [it for it in self.items.values() if it.status == "active"]

    def items_for(self, prompt_text: str) -> list[DynamicItem]:
        """The active dynamic items that apply to a prompt (its text)."""
        return [it for it in self.active() if it.applies_to(prompt_text)]

    # --- persistence ----------------------------------------------------------------------------
    def _event(
        self, event: str, item_id: str | None, step: int, why: str, evidence, criterion=None, epoch=None
    ):
        self.version += 1
        entry = {"version": self.version, "event": event, "item": item_id, "step": step, "epoch": epoch,
                 "why": why, "evidence": list(evidence)[:20]}  # fmt: skip
        if criterion is not None:
            entry["criterion"] = criterion
        self.history.append(entry)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "config": asdict(self.cfg),
            "items": [asdict(it) for it in self.items.values()],
            "history": self.history,
            "window": [list(w) for w in self._window],
        }

    @classmethod
    def from_dict(cls, d: dict) -> RubricPool:
        pool = cls(DynamicRubricConfig(**d["config"]))
        pool.items = {it["id"]: DynamicItem(**it) for it in d["items"]}
        pool.version, pool.history = d["version"], list(d["history"])
        for step, n, modes in d.get("window", []):
            pool._window.append((step, n, modes))
        return pool

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): readers on other nodes never see half a pool."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RubricPool:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def log_to_mlflow(self, epoch: int) -> None:
        """The pool as a versioned artifact of the active run (rubric_pool/epoch-NNN.json) + counts."""
        import mlflow

        counts = {s: sum(it.status == s for it in self.items.values()) for s in STATUSES}
        mlflow.log_dict(self.to_dict(), f"rubric_pool/epoch-{epoch:03d}.json")
        mlflow.log_metrics(
            {f"rubric_pool/{k}": v for k, v in counts.items()} | {"rubric_pool/version": self.version},
            step=epoch,
        )


def active_counts(history: list[dict]) -> list[tuple[int, int, int, int]]:
    """Per step of the pool's history: (step, admitted so far, retired so far, active now)."""
    out, admitted, retired = [], 0, 0
    for e in sorted(history, key=lambda e: e["step"]):
        admitted += e["event"] == "admitted"
        retired += e["event"] == "retired"
        if out and out[-1][0] == e["step"]:
            out.pop()
        out.append((e["step"], admitted, retired, admitted - retired))
    return out


def plot_history(history: list[dict], path: str | Path, counts: list[dict] | None = None) -> Path:
    """The pool over training: items per step by status, each admission and retirement marked.

    `counts`: the trainer's per-step rows (`rubric_pool/candidate|active|retired`, history.json), drawn
    over every step; without them, the active count after each event of `history`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    active_at: dict[int, int] = {r[0]: r[3] for r in active_counts(history)}
    if counts:
        steps = [int(c["step"]) for c in counts]
        for key, color in (("candidate", "#8172B2"), ("active", "#4C72B0"), ("retired", "#C44E52")):
            ax.plot(steps, [c.get(f"rubric_pool/{key}", 0) for c in counts], "-o", ms=3, color=color,
                    label=f"{key} items")  # fmt: skip
        active_at |= {int(c["step"]): c.get("rubric_pool/active", 0) for c in counts}
    elif active_at:
        ax.step(list(active_at), list(active_at.values()), where="post", label="active items")
    for event, marker, color in (
        ("admitted", "^", "#55A868"),
        ("retired", "v", "#C44E52"),
        ("rejected", "x", "grey"),
    ):
        steps = [e["step"] for e in history if e["event"] == event]
        ys = [active_at.get(st, 0) for st in steps]
        ax.scatter(steps, ys, marker=marker, s=60, color=color, zorder=3, label=f"{event} ({len(steps)})")
    ax.set_xlabel("step")
    ax.set_ylabel("items")
    ax.set_title("dynamic rubric pool", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


_POOL_FILES: dict[Path, tuple[int, RubricPool]] = {}  # path -> (mtime, pool): one read per change


def items_from_pool_file(path: str | Path, prompt_text: str) -> tuple[list[RubricItem], int]:
    """(the active items that apply to `prompt_text`, the pool version) from a pool file, re-read only
    when the file changed (a reward worker calls this once per rollout)."""
    path = Path(path)
    stamp = path.stat().st_mtime_ns
    cached = _POOL_FILES.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, RubricPool.load(path))
        _POOL_FILES[path] = cached
    pool = cached[1]
    return [it.rubric_item() for it in pool.items_for(prompt_text)], pool.version
