"""The pipeline feeding verl: the dataset verl builds from data.custom_cls serves scheduler tasks
through verl's own dataloader, the step report (DataProto / TransferQueue-shaped) applies the gate,
the scheduler state rides in the dataloader checkpoint, and the cluster command carries the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from transfer_queue import KVBatchMeta
from verl.protocol import DataProto
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.import_utils import load_extern_type
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from m3.clinic.case_files import load_cases
from m3.clinic.transcript import STAGES, Transcript
from m3.data.prompts import inquiry_rows, write_parquet
from m3.model.tokenizer import build_qwen3_tokenizer
from m3.rl.verl_config import compose_verl_config
from stage1_expert_rl import verl_pipeline as vp

CASES = Path(__file__).resolve().parents[2] / "data" / "agentclinic_medqa.jsonl"
B = 4  # data.train_batch_size of these tests


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Parquet files as the cluster launch writes them (6 train cases, 2 val) and the composed
    stage-1 verl config with the pipeline overrides."""
    tmp = tmp_path_factory.mktemp("vp")
    rows = inquiry_rows(load_cases(CASES)[:8])
    write_parquet(rows[:6], tmp / "train.parquet")
    write_parquet(rows[6:], tmp / "val.parquet")
    cfg = compose_verl_config(
        "stage1_expert",
        [
            f"data.train_files={tmp / 'train.parquet'}",
            f"data.val_files={tmp / 'val.parquet'}",
            f"data.train_batch_size={B}",
            f"+data.cache_dir={tmp / 'cache'}",  # verl reads it (RLHFDataset), its YAML lacks it
            "data.filter_overlong_prompts=false",  # verl's tokenizing length filter: slow, not ours
            *vp.cluster_overrides(gate_tau=0.5, seed=0),
        ],
    )
    return cfg.data, build_qwen3_tokenizer()


def verl_dataset(setup, files_key="train_files"):
    data_cfg, tok = setup
    return create_rl_dataset(data_cfg[files_key], data_cfg, tok, None)  # what verl's trainer calls


def verl_loader(ds, data_cfg):
    """verl's v1 train dataloader (trainer_base._init_dataloader, sync mode)."""
    return StatefulDataLoader(ds, batch_size=B, num_workers=0, drop_last=True, collate_fn=collate_fn,
                              sampler=create_rl_sampler(data_cfg, ds))  # fmt: skip


class Fetch:
    """verl's v1 `_fetch_one_gen_batch`: the next batch; a new iterator (epoch) on StopIteration."""

    def __init__(self, loader):
        self.loader, self.it = loader, None

    def __call__(self) -> dict:
        try:
            if self.it is None:
                self.it = iter(self.loader)
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def rollout_fields(item: dict, score: float) -> dict:
    """What the m3_consultation loop leaves for one rollout of a row: its stage run on top of the carried
    transcript (a hand-written doctor turn) and the stage verifier score."""
    info = item["extra_info"]
    stage = info["stages"][0]
    if "transcript" in info:
        t = Transcript.from_dict(info["transcript"])
        t.add("instruction", f"instruction for {stage}", stage)
    else:
        t = Transcript(case_id=info["case_id"])
        t.add("instruction", item["raw_prompt"][-1]["content"], "inquiry")
    t.add("doctor", f"{info['case_id']} {stage} at score {score}", stage)
    return {"case_id": info["case_id"], "transcript": t.to_dict(), "stage_scores": {stage: score}}


def as_dataproto(batch: dict, scores: list[list[float]]) -> DataProto:
    """The step's rollouts as the legacy trainer's DataProto: n rollouts per row share its uid."""
    rows = [{k: batch[k][i] for k in ("extra_info", "raw_prompt")} for i in range(len(scores))]
    nt: dict[str, list] = {"uid": [], "extra_info": [], "case_id": [], "transcript": [], "stage_scores": []}
    for i, (row, group) in enumerate(zip(rows, scores, strict=True)):
        for s in group:
            f = rollout_fields(row, s)
            nt["uid"].append(f"u{i}")
            nt["extra_info"].append(row["extra_info"])
            for k in ("case_id", "transcript", "stage_scores"):
                nt[k].append(f[k])
    return DataProto.from_dict(
        tensors={"responses": torch.zeros(len(nt["uid"]), 3, dtype=torch.long)},
        non_tensors={k: vp._objects(v) for k, v in nt.items()},
    )


def test_verl_loads_our_classes_and_the_val_split_is_plain(setup):
    data_cfg, _ = setup
    assert load_extern_type(vp.MODULE, "PipelineReplayBuffer") is vp.PipelineReplayBuffer
    val = verl_dataset(setup, "val_files")
    assert type(val) is vp.PipelineDataset and not val.pipeline and len(val) == 2
    assert list(val[0]["extra_info"]["stages"]) == list(STAGES)  # whole consultations
    assert isinstance(vp.PipelineReplayBuffer("sync", {}, 8, "drop", {}), vp.ReplayBuffer)
    with pytest.raises(ValueError, match="sync"):
        vp.PipelineReplayBuffer("async", {}, 8, "drop", {})


def test_batches_follow_the_scheduler_and_the_gate(setup, monkeypatch):
    data_cfg, _ = setup
    ds = verl_dataset(setup)
    assert ds.pipeline and len(ds) == 6
    fetch = Fetch(verl_loader(ds, data_cfg))

    # step 1: fill_idle_slots admits B new cases; the rows have verl's item schema
    b1 = fetch()
    assert [i["stages"] for i in b1["extra_info"]] == [["inquiry"]] * B
    plain = RLHFDataset.__getitem__(ds, 0)  # the parquet row as verl's own dataset serves it
    assert set(b1) == set(plain) and b1["dummy_tensor"].shape == (B, 1)
    assert b1["agent_name"].tolist() == ["m3_consultation"] * B
    ids = [i["case_id"] for i in b1["extra_info"]]
    with pytest.raises(RuntimeError, match="never reported"):
        fetch()  # no slot of step 2 is resolved while step 1 is unreported
    fetch = Fetch(verl_loader(ds, data_cfg))

    # report: cases 0, 1 pass the inquiry gate (best of the group >= 0.5), cases 2, 3 fail; in two
    # parts (parameter_sync_step=2), each in reverse completion order
    nt = as_dataproto(b1, [[0.2, 0.9], [0.6, 0.1], [0.3, 0.4], [0.0, 0.1]]).non_tensor_batch
    for part in ([2, 3, 0, 1], [6, 7, 4, 5]):  # two rollouts per row: row i at 2i, 2i + 1
        m = ds.update({k: v[part] for k, v in nt.items()})
    assert m["pipeline/inquiry/reported"] == 4 and m["pipeline/inquiry/pass_rate"] == 0.5
    assert sorted(ds.scheduler.stopped) == sorted(ids[2:])

    # step 2 mixes stages: DDX of the two survivors (with their best transcripts) + 2 new cases
    b2 = fetch()
    got = [(i["case_id"], i["stages"][0]) for i in b2["extra_info"]]
    assert got[:2] == [(ids[0], "ddx"), (ids[1], "ddx")] and ds.requeued == 0  # batch order kept
    assert [s for _, s in got[2:]] == ["inquiry", "inquiry"] and not {c for c, _ in got} & set(ids[2:])
    carried = Transcript.from_dict(b2["extra_info"][0]["transcript"])
    assert carried.turns[-1].text.endswith("score 0.9")  # the group's best rollout is carried
    assert b2["raw_prompt"][0][-1]["content"].endswith("score 0.9")  # ... and is the prompt so far
    from m3.rl.agent_loop import EpisodeSpec

    assert EpisodeSpec.from_extra_info(b2["extra_info"][0]).stages == ("ddx",)  # the agent loop accepts it

    # step 2 reported by PipelineReplayBuffer.sample: verl's sync sample() and TransferQueue stand in
    # (trajectory fields built as the TQ agent-loop worker stores them); a DDX fails, and the group
    # of the last row failed in rollout (no trajectories): it is requeued when step 3 is planned
    fields, keys = [], []
    for i, score in enumerate([0.8, 0.1, 0.7]):
        fields.append({"extra_info": b2["extra_info"][i], "extra_fields": rollout_fields(
            {k: b2[k][i] for k in ("extra_info", "raw_prompt")}, score)})  # fmt: skip
        keys.append(f"uid{i}_0_0")
    stored = list_of_dict_to_tensordict(fields)
    meta = KVBatchMeta(keys=keys, tags=[{}] * 3, partition_id="train")
    monkeypatch.setattr(vp.ReplayBuffer, "sample", lambda self, g, p, b: (meta, {"training/x": 1.0}))
    monkeypatch.setattr(
        vp.tq, "kv_batch_get", lambda keys, partition_id, select_fields: stored.select(*select_fields)
    )
    batch, m = vp.PipelineReplayBuffer("sync", {}, 8, "drop", {}).sample(
        global_steps=2, partition_id="train", batch_size=B
    )
    assert batch is meta and m["training/x"] == 1.0  # verl's batch and metrics pass through
    assert m["pipeline/ddx/pass_rate"] == 0.5 and ids[1] in ds.scheduler.stopped

    b3 = fetch()
    assert ds.requeued == 1
    stages = {(i["case_id"], i["stages"][0]) for i in b3["extra_info"]}
    assert (ids[0], "lab") in stages and (got[2][0], "ddx") in stages  # three stages in flight
    assert (got[3][0], "inquiry") in stages  # the lost task came back


def test_checkpoint_round_trip_and_epochs(setup):
    data_cfg, _ = setup
    ds = verl_dataset(setup)
    loader = verl_loader(ds, data_cfg)
    fetch = Fetch(loader)
    b1 = fetch()
    ds.update(as_dataproto(b1, [[0.0]] * B))  # every case stopped at the inquiry gate
    saved = loader.state_dict()  # what verl's checkpoint stores (data.pt)

    again = verl_dataset(setup)
    loader2 = verl_loader(again, data_cfg)
    loader2.load_state_dict(saved)
    fetch2 = Fetch(loader2)
    # 2 cases left for 4 slots: a second copy of the cases is admitted (a static dataset's next epoch)
    b2, b2_again = fetch(), fetch2()
    got = [i["case_id"] for i in b2["extra_info"]]
    assert got == [i["case_id"] for i in b2_again["extra_info"]]  # the resumed run plans the same batch
    assert sum(c.endswith("#e1") for c in got) == 2 and ds.epochs == again.epochs == 2
    rows = [RLHFDataset.__getitem__(ds, j) for j in range(len(ds))]  # the parquet rows
    index = {r["extra_info"]["case_id"]: r["index"] for r in rows}
    copy = next(i for i in b2["extra_info"] if i["case_id"].endswith("#e1"))
    assert copy["index"] == index[copy["case_id"][: -len("#e1")]]  # the copy keeps its row's extras


def test_cluster_dry_run_carries_the_pipeline_overrides(tmp_path, capsys):
    from m3.config import compose
    from stage1_expert_rl import train

    # train.main's cluster branch minus the registry (resolve() also takes a directory as the base)
    cfg = compose(
        "stage1", ["expert=inquiry", "scale=cluster", "dry_run=true", "gate_tau=0.3", f"base={tmp_path}"]
    )
    train.run_cluster(cfg, inquiry_rows(load_cases(CASES)[:8]), tmp_path / "c")  # validates, then prints
    cmd = capsys.readouterr().out.strip().splitlines()[-1]
    for part in (
        "data.custom_cls.path='pkg://stage1_expert_rl.verl_pipeline'",
        "data.custom_cls.name='PipelineDataset'",
        "trainer.v1.sampler.custom_sampler.name='PipelineReplayBuffer'",
        "data.dataloader_num_workers=0",
        "+data.pipeline={gate_tau:0.3,seed:0}",
    ):
        assert part in cmd
    # the printed command, read back by verl's own config, validates and names our classes
    import shlex

    from verl.utils.dataset.rl_dataset import get_dataset_class

    from m3.rl.verl_config import compose_verl_base, validate

    argv = shlex.split(cmd)
    base = argv[argv.index("verl.trainer.main_ppo") + 1].removeprefix("--config-name=")
    cfg = compose_verl_base(base, argv[argv.index("verl.trainer.main_ppo") + 2 :])
    validate(cfg)
    assert get_dataset_class(cfg.data) is vp.PipelineDataset and cfg.data.pipeline.gate_tau == 0.3
