"""The cluster-side miner reads verl's rollout dumps, updates the shared pool, and resumes."""

import json

import pytest

from m3.rl.rubric_pool import RubricPool
from stage1_expert_rl import rubric_miner

RUBRIC = json.dumps([{"criterion": "Advises seeing a doctor if the fever lasts.", "points": 5},
                     {"criterion": "Recommends antibiotics.", "points": -5}])  # fmt: skip


def _dump(path, step, outputs):
    rows = [{"input": "user: I have chest pain and a fever. What should I do?", "output": o, "gts": RUBRIC,
             "score": 0.9, "step": step, "r_task": 0.9 - 0.01 * i} for i, o in enumerate(outputs)]  # fmt: skip
    (path / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_miner_processes_each_step_once_and_keeps_the_pool(tmp_path):
    dumps = tmp_path / "rollouts"
    dumps.mkdir()
    for step in (1, 2):  # high-scoring answers that never send the user to urgent care (red flag: chest pain)
        _dump(dumps, step, ["Rest and drink fluids.", "Drink water and rest.", "Take a nap."])
    pool_path = tmp_path / "pool.json"
    args = ["--rollouts", str(dumps), "--pool", str(pool_path), "--steps-per-epoch", "2"]
    assert rubric_miner.main(args) == 0
    pool = RubricPool.load(pool_path)
    item = next(it for it in pool.active() if it.failure_mode == "missing_safety:chest pain")
    assert item.points == 6 and item.scope == ["chest pain"] and set(item.evidence) >= {"1-1", "2-1"}
    # (the offline claim verifier may flag a claim as well: any other admitted item is a claim item)
    assert all(
        it.failure_mode.split(":")[0] in ("missing_safety", "uncertain", "refuted") for it in pool.active()
    )
    assert json.loads((tmp_path / "pool.json.steps.json").read_text()) == [1, 2]
    version = pool.version
    assert rubric_miner.main(args) == 0 and RubricPool.load(pool_path).version == version  # nothing re-mined


def test_a_dump_without_r_task_names_file_line_field(tmp_path):
    (tmp_path / "3.jsonl").write_text(json.dumps({"input": "x", "output": "y", "gts": RUBRIC}) + "\n")
    with pytest.raises(ValueError, match=r"3.jsonl:1: field 'r_task' missing"):
        rubric_miner.rollouts_of(tmp_path / "3.jsonl")
