"""The consultation transcript: who said what, in which stage, and which step it belongs to.

A consultation (SPAR, docs/formulas.md) runs K=4 stages: Inquiry -> DDX -> Lab -> Diagnosis. Each stage
starts with a stage instruction p_k (shown to the doctor), then steps; a step z_j is one user turn
(patient reply or instruction) followed by one doctor turn. Interruption snippets (25% of
dialogues) are visible to the doctor only, never to the patient simulator.

The transcript knows, for every turn, whether it is the doctor's (policy tokens: loss mask 1) or
context (patient, instructions, interruptions: mask 0). `doctor_messages` is the chat the doctor
model sees; `patient_messages` is what the simulator sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STAGES = ("inquiry", "ddx", "lab", "diagnosis")
ROLES = ("instruction", "patient", "interrupt", "doctor")


@dataclass
class Turn:
    role: str  # instruction | patient | interrupt | doctor
    text: str
    stage: str
    step: int  # index j of the step this turn belongs to (a doctor turn closes its step)
    token_ids: list[int] | None = None  # the doctor's sampled tokens when generated locally
    logprobs: list[float] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"turn role must be one of {ROLES}, got {self.role!r}")
        if self.stage not in STAGES:
            raise ValueError(f"turn stage must be one of {STAGES}, got {self.stage!r}")


@dataclass
class Transcript:
    case_id: str
    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)
    interrupted: str | None = None  # None | "end_of_turn" | "mid_turn"
    ended_by: str | None = None  # why the episode ended: "diagnosis", "turn_limit", "gate"

    # --- building -------------------------------------------------------------------------
    def add(self, role: str, text: str, stage: str, **kw) -> Turn:
        """Append a turn; a turn after a doctor turn opens the next step."""
        last = self.turns[-1] if self.turns else None
        step = 0 if last is None else last.step + (1 if last.role == "doctor" else 0)
        turn = Turn(role, text, stage, step, **kw)
        self.turns.append(turn)
        return turn

    # --- views ----------------------------------------------------------------------------
    def doctor_turns(self, stage: str | None = None) -> list[Turn]:
        return [t for t in self.turns if t.role == "doctor" and (stage is None or t.stage == stage)]

    def steps(self) -> list[tuple[list[Turn], Turn]]:
        """[(context turns of step j, doctor turn of step j)] for every completed step."""
        out: list[tuple[list[Turn], Turn]] = []
        context: list[Turn] = []
        for t in self.turns:
            if t.role == "doctor":
                out.append((context, t))
                context = []
            else:
                context.append(t)
        return out

    def stage_output(self, stage: str) -> str:
        """y_k: the doctor's text in stage k (all its turns, joined)."""
        return "\n".join(t.text for t in self.doctor_turns(stage))

    def doctor_messages(self) -> list[dict]:
        """The doctor model's chat: instructions, patient replies and interruptions as user turns."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for t in self.turns:
            role = "assistant" if t.role == "doctor" else "user"
            if msgs and msgs[-1]["role"] == role == "user":
                msgs[-1]["content"] += "\n\n" + t.text  # consecutive context turns form one user turn
            else:
                msgs.append({"role": role, "content": t.text})
        return msgs

    def patient_messages(self) -> list[dict]:
        """What the simulator sees: doctor questions and its own replies; never interruptions."""
        return [
            {"role": "user" if t.role == "doctor" else "assistant", "content": t.text}
            for t in self.turns
            if t.role in ("doctor", "patient") and t.stage == "inquiry"
        ]

    # --- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Transcript:
        turns = [Turn(**t) for t in d.get("turns", [])]
        return cls(d["case_id"], d.get("system_prompt", ""), turns, d.get("interrupted"), d.get("ended_by"))
