"""The segmented pipeline (pipeline.py) feeding verl 0.9.1's v1 trainer: a dataset and a replay buffer.

    data.custom_cls.path=pkg://stage1_expert_rl.verl_pipeline            data.custom_cls.name=PipelineDataset
    trainer.v1.sampler.custom_sampler.path=pkg://stage1_expert_rl.verl_pipeline
    trainer.v1.sampler.custom_sampler.name=PipelineReplayBuffer
    data.dataloader_num_workers=0   +data.pipeline={gate_tau:0.5,seed:0}  (all from `cluster_overrides()`)

Locally the loop calls `scheduler.next_batch` / `to_rows` / `report` itself (train.py). On a cluster
verl owns the loop, so the scheduler is driven from the two places verl 0.9.1 lets us plug in:

- `PipelineDataset` (`data.custom_cls`, an `RLHFDataset`): the train split's items ARE scheduler tasks.
  The dataloader fetches a batch as one `__getitems__(indices)` call (torch's map-style fetcher);
  that call asks the scheduler for `len(indices)` tasks (`next_batch`) and returns `to_rows(tasks)`
  as verl items. The sampler's indices are ignored: an index names a dataloader slot, and a slot is
  resolved to a task only when verl fetches the batch, after the previous step's report.
- `PipelineReplayBuffer` (`trainer.v1.sampler.custom_sampler`, verl's sync `ReplayBuffer`): after
  `sample()` has collected the step's finished groups, it reads their `extra_info` (the row: case,
  stage) and `extra_fields` (the agent loop's case_id, transcript, stage_scores) from TransferQueue
  and calls `PipelineDataset.update`, which reports every group (`report_group`: the best rollout is
  gated on V_k >= tau and carried). The next `prepare_step` then fetches the next batch.

What verl 0.9.1 does NOT offer, and how this handles it:
- no custom dataloader sampler (`data.sampler.class_path` and `AbstractCurriculumSampler.update`
  are gone; the v1 trainer always builds RandomSampler/SequentialSampler), and no per-step dataset
  hook in the v1 trainer (`on_batch_end` is legacy-trainer only, and SPAR needs v1). Hence the two
  pieces above; `on_batch_end` is provided too, for the legacy trainer.
- `dataloader_num_workers > 0` would give each worker process its own copy of the scheduler: the
  train split refuses it. With 0 workers the dataloader does not prefetch, so the fetch of step t+1
  runs after step t was reported (sync mode: `prepare_step` follows the previous `sample`).
- the dataloader needs full batches; the paper's warm-up steps are shorter than a batch. So
  `fill_idle_slots` is forced on (free slots admit new cases), and when the pools hold fewer tasks
  than a batch, a new copy of every case is admitted (case id "<id>#e<k>", k = 1, 2, ...: the
  scheduler's ids are unique), which is what a static dataset's next epoch would do.
- async trainer modes keep several batches in flight and fetch one prompt at a time: the gate of
  step t would not be known when step t+1 is planned. `PipelineReplayBuffer` accepts sync only.
- a group that failed in rollout has no trajectories to report: when the next batch is planned, its
  task goes back to the front of its pool (the scheduler's own resume rule; pipeline/requeued).
The dataset and the replay buffer meet through this module (`active_dataset()`), both loaded with
`pkg://` in the trainer process. The scheduler state rides in verl's dataloader checkpoint
(`state_dict`/`load_state_dict`: torchdata saves a map-style dataset's state). The val split (any
file list other than data.train_files) is a plain RLHFDataset of whole consultations.
Carried contexts make a later stage's prompt longer than x_1: data.max_prompt_length must cover
x_1 plus the earlier stages (verl's prompt-length filter sees only x_1).

Run the tests: `pytest tests/stage1_expert_rl/test_verl_pipeline.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import transfer_queue as tq
from omegaconf import DictConfig, ListConfig, OmegaConf
from verl.protocol import DataProto
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.dataset.rl_dataset import RLHFDataset

from m3.clinic.cases import ClinicalCase
from m3.clinic.transcript import Transcript
from stage1_expert_rl.pipeline import PipelineConfig, PipelineScheduler, Task

MODULE = "pkg://stage1_expert_rl.verl_pipeline"
_EPOCH = re.compile(r"#e\d+$")
_SCHEDULER_KEYS = ("case", "case_id", "stages", "transcript", "seed")  # to_rows sets these
_ACTIVE: list[PipelineDataset] = []  # the train split of this process (one trainer per process)


def cluster_overrides(gate_tau: float, seed: int) -> list[str]:
    """The verl overrides that switch a stage-1 inquiry job to the pipeline (module docstring)."""
    return [
        f"data.custom_cls.path={MODULE}",
        "data.custom_cls.name=PipelineDataset",
        "data.dataloader_num_workers=0",
        f"+data.pipeline={{gate_tau:{float(gate_tau)},seed:{int(seed)}}}",
        f"trainer.v1.sampler.custom_sampler.path={MODULE}",
        "trainer.v1.sampler.custom_sampler.name=PipelineReplayBuffer",
    ]


def active_dataset() -> PipelineDataset:
    if not _ACTIVE:
        raise RuntimeError(
            "PipelineReplayBuffer found no pipeline dataset in this process: set "
            f"data.custom_cls.path={MODULE} data.custom_cls.name=PipelineDataset"
        )
    return _ACTIVE[-1]


def _files(x: Any) -> list[str]:
    return [str(f) for f in (x if isinstance(x, list | ListConfig | tuple) else [x])]


def _objects(values: list) -> np.ndarray:
    """A 1-D object array (np.array would turn a list of equal-length lists into a 2-D array)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _pipeline_config(config: DictConfig) -> PipelineConfig:
    raw = config.get("pipeline") or {}
    raw = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw)
    if not raw.setdefault("fill_idle_slots", True):
        raise ValueError(
            "data.pipeline.fill_idle_slots=false: verl's dataloader needs full batches; drop the key"
        )
    try:
        return PipelineConfig(**raw)
    except TypeError as e:
        raise ValueError(f"data.pipeline: {e}; keys are gate_tau, stage_tau, fill_idle_slots, seed") from e


class PipelineDataset(RLHFDataset):
    """`data.custom_cls` for the inquiry expert: train items are the scheduler's tasks (module docstring)."""

    def __init__(self, data_files, tokenizer, config: DictConfig, processor=None, max_samples: int = -1):
        super().__init__(data_files, tokenizer, config, processor=processor, max_samples=max_samples)
        train, val = _files(config.get("train_files")), _files(config.get("val_files"))
        self.pipeline = _files(data_files) == train
        if not self.pipeline:
            return  # the val split: whole consultations, as RLHFDataset serves them
        if train == val:
            raise ValueError("data.train_files == data.val_files: give the pipeline a separate val split")
        if config.get("dataloader_num_workers", 0) != 0:
            raise ValueError(
                "PipelineDataset needs data.dataloader_num_workers=0: worker processes would each hold "
                "their own copy of the scheduler"
            )
        self.scheduler = PipelineScheduler(_pipeline_config(config))
        self.cases: list[ClinicalCase] = []
        # case id -> the parquet row's other extra_info (index, rubrics, ...), merged into its rows
        self.extra: dict[str, dict] = {}
        for row in self.dataframe:
            info = row["extra_info"]
            case = info["case"]
            case = ClinicalCase.from_dict(json.loads(case) if isinstance(case, str) else dict(case))
            self.cases.append(case)
            self.extra[case.case_id] = {
                k: v for k, v in info.items() if k not in _SCHEDULER_KEYS and v is not None
            }
        self.scheduler.add_cases(self.cases)
        self.epochs = 1  # copies of the case list admitted so far
        self.requeued = 0
        self._order: dict[str, int] = {}  # task key -> slot in the batch last planned
        self._reported = False  # update() ran since that batch was planned
        _ACTIVE.append(self)

    # --- items -----------------------------------------------------------------------------
    def __getitems__(self, indices: list[int]) -> list[dict]:
        """One dataloader batch: the scheduler's next `len(indices)` tasks (the indices are ignored)."""
        if not self.pipeline:
            return [RLHFDataset.__getitem__(self, i) for i in indices]
        return [self._item(row) for row in self.scheduler.to_rows(self.next_tasks(len(indices)))]

    def __getitem__(self, index: int) -> dict:
        if not self.pipeline:
            return super().__getitem__(index)
        return self.__getitems__([index])[0]

    def next_tasks(self, n: int) -> list[Task]:
        """Plan the next batch. In sync mode every group of the previous batch has been sampled (and
        reported) by now, so a task still in flight had no trajectory: it goes back to the front of
        its pool (the scheduler's own resume rule). Not one report at all means nothing reports."""
        if self.scheduler.in_flight:
            if not self._reported:
                raise RuntimeError(
                    f"the {len(self.scheduler.in_flight)} tasks of the previous batch were never reported, so "
                    f"the quality gate cannot apply: set trainer.v1.sampler.custom_sampler.path={MODULE} "
                    "and .name=PipelineReplayBuffer (trainer.v1.trainer_mode=sync)"
                )
            self.requeued += len(self.scheduler.in_flight)
            self.scheduler.load_state_dict(self.scheduler.state_dict())
        while sum(len(p) for p in self.scheduler.pools.values()) < n:
            self._admit_epoch()
        tasks = self.scheduler.next_batch(n)
        assert len(tasks) == n, "fill_idle_slots fills every slot while the pools hold n tasks"
        self._order, self._reported = {t.key: i for i, t in enumerate(tasks)}, False
        return tasks

    def _admit_epoch(self) -> None:
        copies = []
        for case in self.cases:
            d = case.to_dict()
            d["case_id"] = f"{case.case_id}#e{self.epochs}"
            self.extra[d["case_id"]] = self.extra[case.case_id]
            copies.append(ClinicalCase.from_dict(d))
        self.scheduler.add_cases(copies)
        self.epochs += 1

    def _item(self, row: dict) -> dict:
        """A scheduler row as RLHFDataset.__getitem__ returns a parquet row (text only)."""
        import torch

        extra = {**self.extra[row["extra_info"]["case_id"]], **row["extra_info"]}
        return {
            **row,
            "extra_info": extra,
            "raw_prompt": row["prompt"],
            "dummy_tensor": torch.tensor([0], dtype=torch.uint8),  # verl: DataProto.batch must not be empty
            "index": extra.get("index", 0),
            "tools_kwargs": extra.get("tools_kwargs", {}),
            "interaction_kwargs": extra.get("interaction_kwargs", {}),
        }

    # --- feedback -----------------------------------------------------------------------------
    def update(self, batch: DataProto | Mapping[str, np.ndarray]) -> dict[str, float]:
        """Report one step's finished rollouts to the scheduler; return the pipeline metrics.

        `batch`: a DataProto or its non_tensor_batch, one entry per trajectory: "uid" (the group),
        "extra_info" (the row: "stages" = [the task's stage]) and the agent loop's extra_fields
        "case_id", "transcript", "stage_scores". A batch may come in parts (parameter_sync_step > 1);
        groups are reported in batch order, so the pools do not depend on rollout completion order.
        """
        nt = batch.non_tensor_batch if isinstance(batch, DataProto) else batch
        groups: dict[str, list[int]] = {}
        for i, uid in enumerate(nt["uid"]):
            groups.setdefault(str(uid), []).append(i)
        found = []
        for idx in groups.values():
            stages = list(nt["extra_info"][idx[0]]["stages"])
            if len(stages) != 1:
                raise ValueError(
                    f"a pipeline row trains one stage, this one ran {stages}: feed PipelineDataset's rows"
                )
            task = self.scheduler.in_flight.get(f"{nt['case_id'][idx[0]]}:{stages[0]}")
            if task is None:
                raise ValueError(
                    f"rollouts of {nt['case_id'][idx[0]]}:{stages[0]} arrived, but that task is not in "
                    "flight: report each step's batch once"
                )
            found.append((self._order.get(task.key, len(self._order)), task, idx))
        for _, task, idx in sorted(found, key=lambda x: x[0]):
            rollouts = [
                (
                    Transcript.from_dict(dict(nt["transcript"][i])),
                    float(nt["stage_scores"][i].get(task.stage, 0.0)),
                )
                for i in idx
            ]
            self.scheduler.report_group(task, rollouts)
        self._reported = True
        metrics = {k: float(v) for k, v in self.scheduler.metrics().items()}
        return {**metrics, "pipeline/requeued": float(self.requeued), "pipeline/epochs": float(self.epochs)}

    def on_batch_end(self, batch: DataProto) -> None:
        """The legacy trainer's per-step dataset hook (the v1 trainer uses PipelineReplayBuffer)."""
        if self.pipeline:
            self.update(batch)

    # --- checkpoint (torchdata's StatefulDataLoader saves a map-style dataset's state) -----------
    def state_dict(self) -> dict[str, Any]:
        if not self.pipeline:
            return {}
        state = {"scheduler": self.scheduler.state_dict(), "epochs": self.epochs, "requeued": self.requeued}
        return json.loads(json.dumps(state))  # a snapshot: the scheduler's state shares its live dicts

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.pipeline or not state:
            return
        self.scheduler.load_state_dict(state["scheduler"])
        self.epochs, self.requeued = state["epochs"], state["requeued"]
        for cid in self.scheduler.cases:  # epoch copies share their original's extra_info
            self.extra.setdefault(cid, self.extra[_EPOCH.sub("", cid)])


def tq_non_tensor_batch(keys: list[str], data) -> dict[str, np.ndarray]:
    """A DataProto-style non_tensor_batch from TransferQueue fields (kv_batch_get of "extra_info" and
    "extra_fields"); keys are verl's "{uid}_{session}_{index}"."""
    from tensordict import NonTensorData

    plain = lambda v: v.data if isinstance(v, NonTensorData) else v  # noqa: E731
    infos = [plain(v) for v in data["extra_info"]]
    fields = [plain(v) for v in data["extra_fields"]]
    out = {"uid": _objects([k.split("_")[0] for k in keys]), "extra_info": _objects(infos)}
    for name in ("case_id", "transcript", "stage_scores"):
        out[name] = _objects([f[name] for f in fields])
    return out


class PipelineReplayBuffer(ReplayBuffer):
    """verl's sync replay buffer that reports each sampled training batch to the pipeline (docstring)."""

    def __init__(self, trainer_mode: str, *args: Any, **kwargs: Any) -> None:
        if trainer_mode != "sync":
            raise ValueError(
                f"trainer.v1.trainer_mode={trainer_mode!r}: the pipeline's gate needs each step's results "
                "before the next batch is planned; use trainer.v1.trainer_mode=sync"
            )
        super().__init__(trainer_mode, *args, **kwargs)

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        batch, metrics = super().sample(global_steps, partition_id, batch_size)
        if partition_id == "train":
            data = tq.kv_batch_get(
                keys=list(batch.keys), partition_id=partition_id, select_fields=["extra_info", "extra_fields"]
            )
            metrics.update(active_dataset().update(tq_non_tensor_batch(list(batch.keys), data)))
        return batch, metrics
