"""Stage 2 on verl's SFT trainer: the teacher column survives verl's collator and micro-batcher, the
loss summed over micro-batches equals the local Clip-FKL (value and gradient), the mixture, and the
composed SFT configs validate and round-trip through the launch command."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from stage2_distill import verl_sft
from stage2_distill.losses import clip_forward_kl_loss, forward_kl_nll_loss
from stage2_distill.records import write_records


def test_mixture_indices_hand_computed():
    domains = ["inquiry", "healthcare", "healthcare", "healthcare", "general", "general"]
    idx = verl_sft.mixture_indices(domains, {"inquiry": 2.0, "healthcare": 1.0, "general": 0.0}, seed=0)
    # N = 6, W = 3 (general has weight 0): inquiry round(6*2/3) = 4 draws of its single record,
    # healthcare round(6*1/3) = 2 distinct records of its three, general none
    c = Counter(domains[i] for i in idx)
    assert c == {"inquiry": 4, "healthcare": 2} and Counter(idx)[0] == 4
    assert len({i for i in idx if domains[i] == "healthcare"}) == 2
    with pytest.raises(ValueError, match="surgery"):
        verl_sft.mixture_indices(domains, {"surgery": 1.0}, seed=0)


def test_sample_tensors_align_mask_and_teacher_with_input_ids():
    r = {
        "prompt_ids": [1, 2],
        "response_ids": [3, 4, 5],
        "loss_mask": [1, 0, 1],
        "teacher_logprobs": [-1.0, 0.0, -3.0],
    }
    t = verl_sft.sample_tensors(r, max_length=10)
    assert t["input_ids"].tolist() == [1, 2, 3, 4, 5] and t["position_ids"].tolist() == [0, 1, 2, 3, 4]
    assert t["loss_mask"].tolist() == [0, 0, 1, 0, 1] and t["teacher_logprobs"].tolist() == [0, 0, -1, 0, -3]
    assert verl_sft.sample_tensors(r, max_length=4, truncation="right")["loss_mask"].tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="max_length"):
        verl_sft.sample_tensors(r, max_length=4)


def test_loss_hand_computed_with_global_normalisation():
    from verl.utils import tensordict_utils as tu

    # one sequence: prompt [7], response [8, 9] (teacher -1, -1); verl's log_probs at t predict t+1:
    # t=0 -> token 8: student -2 < -1 (active, NLL 2); t=1 -> token 9: -0.5 >= -1 (clipped); t=2: padding
    nest = lambda x, dt: torch.nested.as_nested_tensor([torch.tensor(x, dtype=dt)], layout=torch.jagged)  # noqa: E731
    data = tu.get_tensordict(
        tensor_dict={
            "input_ids": nest([7, 8, 9], torch.long),
            "loss_mask": nest([0, 1, 1], torch.long),
            "teacher_logprobs": nest([0.0, -1.0, -1.0], torch.float32),
        },
        non_tensor_dict={"pad_mode": "no_padding", "dp_size": 2, "batch_num_tokens": 4},
    )
    out = {"log_probs": nest([-2.0, -0.5, -9.0], torch.float32)}
    loss, metrics = verl_sft.distill_sft_loss(None, out, data)
    assert loss.item() == pytest.approx(2.0 / 4 * 2) and metrics == {}  # sum / global tokens * dp_size
    fkl, _ = verl_sft.distill_sft_loss(None, out, data, loss="fkl")
    assert fkl.item() == pytest.approx((2.0 + 0.5) / 4 * 2)


@pytest.mark.parametrize("loss", ["clip_fkl", "fkl"])
def test_micro_batched_loss_equals_local_loss(tmp_path, loss):
    """Records -> our dataset -> verl's collator -> verl's dynamic micro-batches -> our loss, summed,
    equals the local loss on the padded batch, in value and gradient (grad accumulation invariance)."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.dataset_utils import SFTTensorCollator
    from verl.workers.engine.utils import prepare_micro_batches

    g = torch.Generator().manual_seed(0)
    records = []
    for i, d in enumerate(["inquiry", "healthcare", "general"] * 2):
        p, n = 2 + i % 3, 3 + (5 * i) % 7
        mask = [int(x) for x in (torch.rand(n, generator=g) > 0.25)]
        teacher = (-torch.rand(n, generator=g) * 3).tolist()
        records.append(
            {
                "domain": d,
                "prompt_ids": torch.randint(0, 50, (p,), generator=g).tolist(),
                "response_ids": torch.randint(0, 50, (n,), generator=g).tolist(),
                "loss_mask": mask,
                "teacher_logprobs": [t if m else 0.0 for t, m in zip(teacher, mask, strict=True)],
                "source_id": str(i),
            }
        )
    write_records(records, tmp_path / "t.parquet")
    ds = verl_sft.TeacherRecordsDataset(
        str(tmp_path / "t.parquet"), None, OmegaConf.create({"max_length": 64})
    )
    assert sorted(ds.index) == list(range(6))  # equal weights, equal domain counts: each record once

    theta = torch.randn(50, generator=g, requires_grad=True)  # the "student": logp(token) = -softplus(theta)

    def logp(tokens):
        return -torch.nn.functional.softplus(theta[tokens])

    # local reference on the padded [B, T] response tokens
    T = max(len(r["response_ids"]) for r in records)
    ids, mask, teach = (torch.zeros(6, T, dtype=torch.long), torch.zeros(6, T), torch.zeros(6, T))
    for b, r in enumerate(records):
        n = len(r["response_ids"])
        ids[b, :n], mask[b, :n] = (
            torch.tensor(r["response_ids"]),
            torch.tensor(r["loss_mask"], dtype=torch.float),
        )
        teach[b, :n] = torch.tensor(r["teacher_logprobs"])
    if loss == "clip_fkl":
        ref, _ = clip_forward_kl_loss(logp(ids), teach, mask, norm="token")
    else:
        ref, _ = forward_kl_nll_loss(logp(ids), mask, norm="token")
    (ref_grad,) = torch.autograd.grad(ref, theta)

    batch = SFTTensorCollator("no_padding")([ds[i] for i in range(len(ds))])
    td = tu.get_tensordict(
        tensor_dict=batch,
        non_tensor_dict={"use_dynamic_bsz": True, "max_token_len_per_gpu": 16, "pad_mode": "no_padding"},
    )
    tu.assign_non_tensor(td, batch_num_tokens=int(td["loss_mask"].values().sum()), dp_size=1)
    micro, _ = prepare_micro_batches(td)
    assert len(micro) > 1
    total = 0.0
    for mb in micro:  # verl's packed convention: position t scores input_ids[t+1] (roll by -1)
        packed = mb["input_ids"].values()
        lp = torch.nested.nested_tensor_from_jagged(
            logp(torch.roll(packed, -1)), offsets=mb["input_ids"].offsets()
        )
        part, _ = verl_sft.distill_sft_loss(None, {"log_probs": lp}, mb, loss=loss)
        total = total + part
    (grad,) = torch.autograd.grad(total, theta)
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(grad, ref_grad)


# --- configs -----------------------------------------------------------------------------------------
def test_fsdp2_config_validates_with_verls_dataclasses(tiny_dir):
    cfg = verl_sft.compose("fsdp2", ["sft_fsdp2=qwen3_30b_a3b", f"model.path={tiny_dir}"])
    built = verl_sft.validate(cfg)
    assert type(built["engine"]).__name__ == "FSDPEngineConfig" and built["engine"].strategy == "fsdp2"
    assert type(built["model"]).__name__ == "HFModelConfig"  # the local checkpoint's config and tokenizer
    assert cfg.trainer.nnodes == 2 and cfg.m3_distill.loss == "clip_fkl"


def test_megatron_config_validates_and_round_trips():
    from m3.rl.verl_config import compose_verl_base

    cfg = verl_sft.compose("megatron", ["m3_distill.loss=fkl"])
    built = verl_sft.validate(cfg)
    assert (
        type(built["engine"]).__name__ == "McoreEngineConfig"
        and built["engine"].pipeline_model_parallel_size == 4
    )
    cmd = verl_sft.ray_job_command(cfg, address="http://head:8265")
    head = [
        "ray",
        "job",
        "submit",
        "--address",
        "http://head:8265",
        "--",
        "python3",
        "-m",
        "stage2_distill.verl_sft",
    ]
    assert cmd[: len(head)] == head and cmd[len(head) : len(head) + 2] == [
        "engine=megatron",
        "optim=megatron",
    ]
    rebuilt = compose_verl_base(verl_sft.BASE, cmd[len(head) :])  # what the job's main() composes
    assert OmegaConf.to_container(rebuilt, resolve=False) == OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize(
    "backend, override, message",
    [
        ("fsdp2", "m3_distill.norm=active", "only token"),
        ("fsdp2", "m3_distill.loss=rkl", "clip_fkl or fkl"),
        ("fsdp2", "data.pad_mode=right", "no_padding"),
        ("fsdp2", "+trainer.totl_epochs=2", "trainer.totl_epochs"),  # typo where verl has no dataclass
        ("fsdp2", "+engine.param_ofload=true", "engine.param_ofload"),  # typo inside a dataclass node
        ("fsdp2", "data.train_batch_size=100", "multiple of the DP size 8"),
        ("fsdp2", "data.max_token_len_per_gpu=4096", "max_token_len_per_gpu"),
        ("fsdp2", "+data.mixture.surgery=1.0", "surgery"),
        ("megatron", "engine.pipeline_model_parallel_size=3", "must divide 64"),
    ],
)
def test_wrong_settings_fail_validation(backend, override, message):
    with pytest.raises(ValueError, match=message):
        verl_sft.validate(verl_sft.compose(backend, [override]))
