"""SPAR against hand-computed numbers, and the "spar" estimator through verl's own dispatch."""

from __future__ import annotations

import os

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import numpy as np
import pytest
import torch

from m3.rl.spar import (
    compute_spar_advantage,
    decode_step_rewards,
    encode_step_rewards,
    global_penalty_gammas,
    group_baseline,
    register,
    spar_step_advantages,
    spread_over_tokens,
    step_gamma,
    step_index_from_mask,
)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=atol, rtol=0
    )


def test_step_gamma_takes_the_worst_violation():
    # no violation -> 1; one mild -> 0.9; mild + severe -> min = 0.1
    assert step_gamma([[], [0.9], [0.9, 0.1], [1.0]]) == [1.0, 0.9, 0.1, 1.0]
    with pytest.raises(ValueError, match="outside"):
        step_gamma([[1.5]])


def test_hand_computed_group():
    # R = [1.0, 0.5, 0.0]: mu = 0.5; unbiased sigma = sqrt((0.25 + 0 + 0.25) / 2) = 0.5
    # rollout 0, gammas [1, 0.1]: (1.0 - 0.5)/0.5 = 1.0, (0.1 - 0.5)/0.5 = -0.8
    # rollout 1, gamma 0.9:       (0.45 - 0.5)/0.5 = -0.1
    # rollout 2, three clean:     (0 - 0.5)/0.5 = -1.0 each
    adv = spar_step_advantages(torch.tensor([1.0, 0.5, 0.0]), [[1.0, 0.1], [0.9], [1.0, 1.0, 1.0]])
    close(adv[0], [1.0, -0.8])
    close(adv[1], [-0.1])
    close(adv[2], [-1.0, -1.0, -1.0])


def test_penalty_barely_moves_a_wide_group_and_dominates_a_narrow_one():
    # the same mild penalty (0.9) on the best rollout's first step
    # wide   R = [0.9, 0.1]:   mu 0.5, sigma sqrt(0.32) = 0.565685
    #        clean 0.4/0.565685 = 0.70711, penalized (0.81 - 0.5)/0.565685 = 0.54801
    # narrow R = [0.81, 0.79]: mu 0.8, sigma sqrt(0.0002) = 0.0141421
    #        clean 0.01/(0.0141421 + 1e-6) = 0.70706, penalized (0.729 - 0.8)/(0.0141421 + 1e-6) = -5.02011
    #        (eps shows at this sigma: without it -5.02046)
    wide = spar_step_advantages(torch.tensor([0.9, 0.1]), [[0.9, 1.0], [1.0, 1.0]])[0]
    narrow = spar_step_advantages(torch.tensor([0.81, 0.79]), [[0.9, 1.0], [1.0, 1.0]])[0]
    close(wide, [0.54801, 0.70711])
    close(narrow, [-5.02011, 0.70706], atol=1e-4)
    assert wide[1] - wide[0] < 0.2 and wide[0] > 0  # still a good step
    assert narrow[1] - narrow[0] > 5  # now the penalty decides the sign


def test_group_of_one_keeps_only_the_penalty():
    # mu = R = 0.7, no spread: sigma treated as 1 -> A = (gamma - 1) * 0.7
    adv = spar_step_advantages(torch.tensor([0.7]), [[1.0, 0.9, 0.1]])
    close(adv[0], [0.0, -0.07, -0.63])


def test_equal_rewards_keep_only_the_penalty_and_stay_bounded():
    # R all 0.6: (gamma - 1) * 0.6; the literal formula would give -0.06 / 1e-6 = -60000
    adv = spar_step_advantages(torch.tensor([0.6, 0.6, 0.6]), [[1.0, 1.0], [0.9, 1.0], [1.0, 0.1]])
    close(adv[0], [0.0, 0.0])
    close(adv[1], [-0.06, 0.0])
    close(adv[2], [0.0, -0.54])
    # float32 noise of the reward encoding is not spread either
    _, denom = group_baseline(torch.tensor([0.6, 0.6 + 1e-7], dtype=torch.float64))
    assert denom.item() == 1.0


def test_step_index_and_spread_zero_simulator_tokens():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 1]])
    idx = step_index_from_mask(mask)
    assert idx.tolist() == [[0, 0, -1, 1, -1, -1], [-1, 0, 0, -1, 1, 1]]
    adv = spread_over_tokens([torch.tensor([1.0, -0.8]), torch.tensor([0.5, -0.1])], idx, mask)
    close(adv, [[1.0, 1.0, 0.0, -0.8, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0, -0.1, -0.1]])
    with pytest.raises(ValueError, match="step advantages"):
        spread_over_tokens([torch.tensor([1.0]), torch.tensor([0.5, -0.1])], idx, mask)


def test_encode_layout_by_hand():
    # steps end at 1, 6, 8; penalties (gamma - 1) * 0.8 = 0, -0.08, -0.72; carrier 0.8 + 0.8 = 1.6
    mask = [1, 1, 0, 0, 1, 1, 1, 0, 1]
    rm = encode_step_rewards(mask, 0.8, [1.0, 0.9, 0.1])
    close(rm, [1.6, 0, 0, 0, 0, 0, -0.08, 0, -0.72])
    assert rm.sum().item() == pytest.approx(0.8, abs=1e-6)  # what verl logs as the score
    r_global, returns = decode_step_rewards(rm[None], torch.tensor([mask]))
    close(r_global, [0.8])
    close(returns[0], [0.8, 0.72, 0.08])  # gamma_j * R


def test_encode_edge_cases():
    # a one-token first turn ends on the carrier: its penalty has no slot, the step counts as clean
    rm = encode_step_rewards([1, 0, 0, 1, 1], 0.5, [0.1, 0.9])
    close(rm, [0.55, 0, 0, 0, -0.05])
    close(decode_step_rewards(rm[None], torch.tensor([[1, 0, 0, 1, 1]]))[1][0], [0.5, 0.45])
    close(encode_step_rewards([1], 0.3, [0.1]), [0.3])  # one-token response
    close(encode_step_rewards([0, 0], 0.3, []), [0.3, 0.0])  # no policy token: R still carried
    with pytest.raises(ValueError, match="2 assistant steps"):
        encode_step_rewards([1, 0, 1], 0.5, [1.0])
    with pytest.raises(ValueError, match="empty response"):
        encode_step_rewards([], 0.5, [])


def _padded_batch(rows):
    """rows: (uid, response_mask, R, gammas) -> right-padded rm_scores, masks, uids."""
    width = max(len(m) for _, m, _, _ in rows)
    rm = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for b, (_, m, r, g) in enumerate(rows):
        rm[b, : len(m)] = encode_step_rewards(m, r, g)
        mask[b, : len(m)] = torch.tensor(m)
    return rm, mask, np.array([u for u, _, _, _ in rows], dtype=object)


# group "a" = test_hand_computed_group's numbers; "b" a lone rollout (R 0.7, one mild penalty)
ROWS = [
    ("a", [1, 1, 0, 1], 1.0, [1.0, 0.1]),
    ("b", [1, 0, 1, 1, 0, 1], 0.7, [1.0, 0.9, 1.0]),
    ("a", [1, 1, 1], 0.5, [0.9]),
    ("a", [1, 0, 1, 0, 1], 0.0, [1.0, 1.0, 1.0]),
]
EXPECTED = [
    [1.0, 1.0, 0.0, -0.8, 0.0, 0.0],
    [0.0, 0.0, -0.07, -0.07, 0.0, 0.0],
    [-0.1, -0.1, -0.1, 0.0, 0.0, 0.0],
    [-1.0, 0.0, -1.0, 0.0, -1.0, 0.0],
]


def test_estimator_through_verls_compute_advantage():
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    register()
    rm, mask, uid = _padded_batch(ROWS)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rm, "response_mask": mask}, non_tensors={"uid": uid}
    )
    out = compute_advantage(data, adv_estimator="spar", config=AlgoConfig(adv_estimator="spar"))
    close(out.batch["advantages"], EXPECTED)
    close(out.batch["returns"], EXPECTED)


def test_global_penalty_by_hand():
    """The third ablation arm: the worst gamma of a rollout on every one of its steps."""
    assert global_penalty_gammas([1.0, 0.1, 0.9]) == [0.1, 0.1, 0.1] and global_penalty_gammas([]) == []
    # rollout 0 of group "a" (R 1.0, gammas [1, 0.1]): both steps (0.1 - 0.5)/0.5 = -0.8;
    # rollout "b" alone (R 0.7, gammas [1, 0.9, 1]): every step (0.9 - 1) * 0.7 = -0.07
    adv = spar_step_advantages(
        torch.tensor([1.0, 0.5, 0.0]), [global_penalty_gammas([1.0, 0.1]), [0.9], [1.0] * 3]
    )
    close(adv[0], [-0.8, -0.8])
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    register()
    rm, mask, uid = _padded_batch(ROWS)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rm, "response_mask": mask}, non_tensors={"uid": uid}
    )
    out = compute_advantage(data, adv_estimator="spar_global", config=AlgoConfig(adv_estimator="spar_global"))
    close(
        out.batch["advantages"],
        [
            [-0.8, -0.8, 0.0, -0.8, 0.0, 0.0],
            [-0.07, 0.0, -0.07, -0.07, 0.0, -0.07],
            [-0.1, -0.1, -0.1, 0.0, 0.0, 0.0],
            [-1.0, 0.0, -1.0, 0.0, -1.0, 0.0],
        ],
    )


def test_estimator_through_the_v1_trainer_path():
    # the v1 trainer calls this with keys "{uid}_{session}_{index}"; non-GRPO goes to compute_advantage
    from verl import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    register()
    rm, mask, uid = _padded_batch(ROWS)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rm, "response_mask": mask}, non_tensors={"uid": uid}
    )
    keys = [f"{u}_{i}_0" for i, u in enumerate(uid)]
    out = compute_advantage_for_multi_trajectories(data, keys, adv_estimator="spar", config={})
    close(out.batch["advantages"], EXPECTED)


def test_all_clean_steps_reproduce_verls_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rows = [
        ("a", [1, 1, 0, 1], 0.9, [1.0, 1.0]),
        ("a", [1, 1, 1, 0], 0.2, [1.0]),
        ("a", [1, 0, 1, 1], 0.4, [1.0, 1.0]),
    ]
    rm, mask, uid = _padded_batch(rows)
    spar_adv, _ = compute_spar_advantage(rm, mask, uid)
    grpo_adv, _ = compute_grpo_outcome_advantage(rm, mask, uid)
    close(spar_adv, grpo_adv)


def test_estimator_rejects_settings_that_corrupt_the_layout():
    rm, mask, uid = _padded_batch(ROWS)
    with pytest.raises(ValueError, match="uid"):
        compute_spar_advantage(rm, mask, None)
    with pytest.raises(ValueError, match="use_kl_in_reward"):
        compute_spar_advantage(rm, mask, uid, config={"use_kl_in_reward": True})
    token_rs = {"rollout_correction": {"rollout_rs": "token_k1,seq_mean_k3", "bypass_mode": False}}
    with pytest.raises(ValueError, match="token_k1"):
        compute_spar_advantage(rm, mask, uid, config=token_rs)
    seq_rs = {"rollout_correction": {"rollout_rs": "seq_mean_k3", "bypass_mode": False}}
    close(compute_spar_advantage(rm, mask, uid, config=seq_rs)[0], EXPECTED)


def test_register_is_idempotent():
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, get_adv_estimator_fn

    register()
    register()
    assert ADV_ESTIMATOR_REGISTRY["spar"] is compute_spar_advantage
    assert get_adv_estimator_fn("spar") is compute_spar_advantage
