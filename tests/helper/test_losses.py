"""helper.losses against brute-force loops over every triplet, gradients, schedule and L1 guidance."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from helper.losses import hard_ratio_schedule, l1_guidance_loss, num_hard_triplets, soft_margin_triplet_loss


def descriptors(b, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    street = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    satellite = F.normalize(street + 0.7 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return street.to(dtype), satellite.to(dtype)


def stable_log1p_exp(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def brute_force_loss(street, satellite, lambda_sm=10.0, hard_ratio=1.0):
    """Python loops over every triplet of both directions, in float64; mining keeps the
    floor(ratio * B * (B - 1)) (at least 1) largest per direction."""
    s = street.double().tolist()
    a = satellite.double().tolist()
    b = len(s)

    def dist(i, j):
        return 2.0 - 2.0 * sum(x * y for x, y in zip(s[i], a[j]))

    street_anchor = [stable_log1p_exp(lambda_sm * (dist(i, i) - dist(i, j)))
                     for i in range(b) for j in range(b) if j != i]
    satellite_anchor = [stable_log1p_exp(lambda_sm * (dist(j, j) - dist(i, j)))
                        for j in range(b) for i in range(b) if i != j]
    n = b * (b - 1)
    k = max(1, int(math.floor(hard_ratio * n + 1e-9)))
    means = [sum(sorted(v, reverse=True)[:k]) / k for v in (street_anchor, satellite_anchor)]
    return 0.5 * (means[0] + means[1])


@pytest.mark.parametrize("b", [2, 3, 5, 8])
@pytest.mark.parametrize("hard_ratio", [1.0, 0.5, 0.1, 0.01])
def test_loss_matches_brute_force_float64(b, hard_ratio):
    street, satellite = descriptors(b, seed=b)
    got = soft_margin_triplet_loss(street, satellite, lambda_sm=10.0, hard_ratio=hard_ratio)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(brute_force_loss(street, satellite, 10.0, hard_ratio), rel=1e-10)


@pytest.mark.parametrize("b,hard_ratio,lambda_sm", [(4, 1.0, 10.0), (6, 0.3, 10.0), (7, 0.05, 5.0)])
def test_loss_matches_brute_force_float32(b, hard_ratio, lambda_sm):
    street, satellite = descriptors(b, dtype=torch.float32, seed=10 + b)
    got = soft_margin_triplet_loss(street, satellite, lambda_sm=lambda_sm, hard_ratio=hard_ratio)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(brute_force_loss(street, satellite, lambda_sm, hard_ratio), rel=1e-5)


def test_directions_are_not_symmetric_copies():
    # swapping the branches swaps the two directions; the mean of both stays the same,
    # but each direction alone differs, so a one-direction bug would show up here
    street, satellite = descriptors(5, seed=3)
    full = soft_margin_triplet_loss(street, satellite)
    assert float(soft_margin_triplet_loss(satellite, street)) == pytest.approx(float(full), rel=1e-10)
    mined = soft_margin_triplet_loss(street, satellite, hard_ratio=0.1)
    assert float(mined) == pytest.approx(brute_force_loss(street, satellite, 10.0, 0.1), rel=1e-10)
    assert float(mined) > float(full)  # the hardest triplets have larger losses than the average


def test_mining_counts():
    assert num_hard_triplets(10, 1.0) == 90
    assert num_hard_triplets(10, 0.1) == 9
    assert num_hard_triplets(32, 0.01) == 9  # floor(9.92)
    assert num_hard_triplets(4, 0.01) == 1  # floor(0.12) = 0 -> at least one
    assert num_hard_triplets(101, 0.29) == int(0.29 * 10100 + 1e-9) == 2929
    assert num_hard_triplets(11, 0.29) == 31  # 0.29 * 110 = 31.9
    assert num_hard_triplets(2, 0.5) == 1


def test_large_lambda_is_stable():
    street, satellite = descriptors(6, seed=4)
    got = soft_margin_triplet_loss(street, satellite, lambda_sm=1000.0)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(brute_force_loss(street, satellite, 1000.0), rel=1e-10)


def test_gradients_flow_and_gradcheck():
    street, satellite = descriptors(4, d=5, seed=5)
    street.requires_grad_()
    satellite.requires_grad_()
    for ratio in (1.0, 0.25):
        assert torch.autograd.gradcheck(
            lambda s, a: soft_margin_triplet_loss(s, a, lambda_sm=3.0, hard_ratio=ratio), (street, satellite)
        )
    loss = soft_margin_triplet_loss(street.float(), satellite.float(), hard_ratio=0.1)
    loss.backward()
    for t in (street, satellite):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gradient_step_lowers_the_loss():
    street, satellite = descriptors(8, seed=6)
    street.requires_grad_()
    loss = soft_margin_triplet_loss(street, satellite)
    loss.backward()
    with torch.no_grad():
        moved = street - 1e-3 * street.grad
    assert float(soft_margin_triplet_loss(moved, satellite)) < loss.item()


def test_global_batch_order_does_not_matter():
    # the DDP engine gathers descriptors rank by rank: any joint permutation of the pairs
    street, satellite = descriptors(9, seed=7)
    perm = torch.randperm(9)
    for ratio in (1.0, 0.1):
        a = soft_margin_triplet_loss(street, satellite, hard_ratio=ratio)
        b = soft_margin_triplet_loss(street[perm], satellite[perm], hard_ratio=ratio)
        assert float(a) == pytest.approx(float(b), rel=1e-10)


def test_autocast_still_float32():
    street, satellite = descriptors(6, dtype=torch.float32, seed=8)
    plain = soft_margin_triplet_loss(street, satellite)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = soft_margin_triplet_loss(street, satellite)
        l1 = l1_guidance_loss(street, satellite)
    assert under.dtype == torch.float32 and l1.dtype == torch.float32
    assert float(under) == float(plain)
    half = soft_margin_triplet_loss(street.bfloat16(), satellite.bfloat16())
    assert half.dtype == torch.float32


def test_loss_errors():
    street, satellite = descriptors(4)
    with pytest.raises(UserError, match="at least 2"):
        soft_margin_triplet_loss(street[:1], satellite[:1])
    with pytest.raises(UserError, match="hard_ratio"):
        soft_margin_triplet_loss(street, satellite, hard_ratio=0.0)
    with pytest.raises(UserError, match="hard_ratio"):
        soft_margin_triplet_loss(street, satellite, hard_ratio=1.5)
    with pytest.raises(ValueError):
        soft_margin_triplet_loss(street, satellite[:3])


# ----------------------------------------------------------------------------- schedule


def test_schedule_quarters_scale_with_n_epochs():
    values = [hard_ratio_schedule(e, 100) for e in range(100)]
    assert values[:25] == [1.0] * 25
    assert values[25:50] == [0.1] * 25
    assert values[50:75] == [0.05] * 25
    assert values[75:] == [0.01] * 25
    assert [hard_ratio_schedule(e, 4) for e in range(4)] == [1.0, 0.1, 0.05, 0.01]
    # n = 10: boundaries at 2.5, 5, 7.5
    assert [hard_ratio_schedule(e, 10) for e in range(10)] == [1.0, 1.0, 1.0, 0.1, 0.1, 0.05, 0.05, 0.05, 0.01, 0.01]
    assert [hard_ratio_schedule(e, 30) for e in (0, 7, 8, 14, 15, 22, 23, 29)] == \
        [1.0, 1.0, 0.1, 0.1, 0.05, 0.05, 0.01, 0.01]


def test_schedule_short_runs_and_past_the_end():
    assert [hard_ratio_schedule(e, 1) for e in range(1)] == [1.0]
    assert [hard_ratio_schedule(e, 2) for e in range(2)] == [1.0, 0.05]
    assert [hard_ratio_schedule(e, 3) for e in range(3)] == [1.0, 0.1, 0.05]
    assert hard_ratio_schedule(150, 100) == 0.01  # resumed past the planned end
    assert hard_ratio_schedule(5, 10, ratios=(1.0,)) == 1.0
    assert [hard_ratio_schedule(e, 4, ratios=(1.0, 0.5)) for e in range(4)] == [1.0, 1.0, 0.5, 0.5]
    with pytest.raises(UserError):
        hard_ratio_schedule(0, 0)
    with pytest.raises(UserError):
        hard_ratio_schedule(0, 10, ratios=(1.0, 0.0))
    with pytest.raises(ValueError):
        hard_ratio_schedule(-1, 10)


# ----------------------------------------------------------------------------- L1 guidance


def test_l1_guidance_value_and_gradient():
    transformed = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss = l1_guidance_loss(transformed, target)
    assert loss.item() == pytest.approx((transformed - target).abs().mean().item(), rel=1e-6)
    loss.backward()
    expected = torch.sign(transformed.detach() - target.detach()) / transformed.numel()
    assert torch.allclose(transformed.grad, expected)
    assert target.grad is None  # the polar target guides, it does not learn
    with pytest.raises(ValueError):
        l1_guidance_loss(transformed, target[:, :, :3])
    assert l1_guidance_loss(transformed.detach().half(), target.detach().half()).dtype == torch.float32


def _infonce_brute_force(street, satellite, scale, smoothing):
    """Cross-entropy written out with loops: -sum_j q_ij log softmax(logits_i)_j, both directions."""
    b = street.shape[0]
    logits = [[scale * float(street[i] @ satellite[j]) for j in range(b)] for i in range(b)]
    total = 0.0
    for rows in (logits, [list(col) for col in zip(*logits)]):
        for i, row in enumerate(rows):
            top = max(row)
            log_z = top + math.log(sum(math.exp(v - top) for v in row))
            target = [smoothing / b + (1.0 - smoothing if j == i else 0.0) for j in range(b)]
            total += -sum(q * (v - log_z) for q, v in zip(target, row)) / b
    return total / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, smoothing", [(2, 0.0), (5, 0.1), (8, 0.3)])
def test_infonce_equals_brute_force(b, smoothing, dtype):
    from helper.losses import infonce_loss

    gen = torch.Generator().manual_seed(b)
    street = F.normalize(torch.randn(b, 16, generator=gen, dtype=dtype), dim=1)
    satellite = F.normalize(torch.randn(b, 16, generator=gen, dtype=dtype), dim=1)
    scale = torch.tensor(14.3, dtype=dtype)
    loss = infonce_loss(street, satellite, scale, smoothing)
    assert loss.dtype == dtype
    assert float(loss) == pytest.approx(_infonce_brute_force(street.double(), satellite.double(), 14.3, smoothing),
                                        rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_infonce_is_symmetric_and_learns_its_temperature():
    from helper.losses import MAX_LOGIT_SCALE, LogitScale, infonce_loss

    street = F.normalize(torch.randn(6, 8), dim=1)
    satellite = F.normalize(torch.randn(6, 8), dim=1)
    scale = LogitScale()
    assert float(scale().detach()) == pytest.approx(1 / 0.07)
    loss = infonce_loss(street, satellite, scale(), 0.1)
    assert float(loss.detach()) == pytest.approx(float(infonce_loss(satellite, street, scale(), 0.1).detach()), rel=1e-6)
    loss.backward()
    assert scale.log_scale.grad is not None and scale.log_scale.grad.abs() > 0
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert float(scale().detach()) == pytest.approx(MAX_LOGIT_SCALE)  # capped
    with pytest.raises(UserError, match="at least 2 pairs"):
        infonce_loss(street[:1], satellite[:1], scale(), 0.0)
