"""The DSM head: exact heading recovery from rolled feature maps, streamed evaluation against a
brute-force loop over shifts, the loss on its similarity matrix, and limited fields of view."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from geometry.heading import heading_columns, heading_error
from helper.losses import soft_margin_triplet_loss, triplet_loss_of_similarity
from helper.metrics import evaluate_retrieval, streaming_ranks
from models import build_model
from models.heads import DSM_CHANNELS, DSMHead
from models.orientation import CircularCorrelation, shift_heading

TINY = dict(backbone="tiny", pretrained=False, transform="polar", sate_size=(64, 64), pano_size=(32, 128))


def _brute_force(street_maps, satellite_maps):
    """sim and shift by an explicit loop over shifts with torch.roll and cosine similarity."""
    window, width = street_maps.shape[-1], satellite_maps.shape[-1]
    n, m = street_maps.shape[0], satellite_maps.shape[0]
    sims = torch.full((n, m), -2.0, dtype=torch.float64)
    shifts = torch.zeros(n, m, dtype=torch.long)
    for i in range(n):
        for j in range(m):
            for k in range(width):
                crop = torch.roll(satellite_maps[j], -k, dims=-1)[..., :window]
                value = F.cosine_similarity(street_maps[i].flatten().double(), crop.flatten().double(), dim=0)
                if value > sims[i, j] + 1e-6:
                    sims[i, j], shifts[i, j] = value, k
    return sims, shifts


@pytest.mark.parametrize("columns", [0, 1, 5, 15])
def test_dsm_head_recovers_an_exact_roll(columns):
    head = DSMHead((4, 16), channels=128)
    features = torch.randn(3, 128, 4, 16)
    satellite = head(features)
    street = head(torch.roll(features, -columns, dims=-1))  # turned to heading 360 * columns / 16
    sims, shifts = head.correlation(street, satellite)
    assert torch.equal(shifts.diagonal(), torch.full((3,), columns))
    assert torch.allclose(sims.diagonal(), torch.ones(3), atol=1e-5)
    headings = head.correlation.heading(shifts.diagonal(), street.shape[1])
    assert torch.equal(headings, torch.full((3,), 360.0 * columns / 16, dtype=torch.float64))


@pytest.mark.parametrize("columns", [0, 3, 11])
def test_dsm_head_recovers_the_heading_of_a_centred_window(columns):
    head = DSMHead((4, 16), channels=128)
    features = torch.randn(2, 128, 4, 16)
    turned = torch.roll(features, -columns, dims=-1)
    window = turned[..., 6:10]  # the centred 4 of 16 columns: a 90-degree field of view
    sims, shifts = head.correlation(head(window), head(features))
    assert torch.equal(shifts.diagonal(), torch.full((2,), (columns + 6) % 16))
    assert torch.equal(head.correlation.heading(shifts.diagonal(), head(window).shape[1]),
                       torch.full((2,), 360.0 * columns / 16, dtype=torch.float64))


def test_heading_round_trip_of_the_convention():
    for heading in (0.0, 22.5, 90.0, 337.5):
        columns = heading_columns(heading, 16)
        assert float(shift_heading(torch.tensor(columns), 16, 16)) == heading
    assert heading_error([359.0, 10.0], [1.0, 350.0]).tolist() == [2.0, 20.0]


@pytest.mark.parametrize("window", [7, 3])
def test_streamed_similarity_matches_a_brute_force_loop_over_shifts(window):
    channels, height, width = 2, 2, 7
    street = F.normalize(torch.randn(9, channels * height * window), dim=1)
    satellite = F.normalize(torch.randn(11, channels * height * width), dim=1)
    correlation = CircularCorrelation(channels, height, width)
    expected, expected_shift = _brute_force(street.view(9, channels, height, window),
                                            satellite.view(11, channels, height, width))
    sims, shifts = correlation(street, satellite, chunk=4)
    assert torch.allclose(sims.double(), expected, atol=1e-5) and torch.equal(shifts, expected_shift)
    positive = torch.arange(9)
    ranks = (expected > expected[positive, positive][:, None] + 1e-6).sum(dim=1)
    streamed = streaming_ranks(street, satellite, positive, chunk_size=2, return_top1=True,
                               similarity=lambda rows, refs: correlation(rows, refs, chunk=3))
    assert torch.equal(streamed.ranks, ranks)
    assert torch.equal(streamed.top1, expected.argmax(dim=1))
    assert torch.equal(streamed.top1_shift, expected_shift[positive, expected.argmax(dim=1)])
    square = expected[:, :9]  # 1:1 pairs: both directions of evaluate_retrieval
    diagonal = square.diagonal()
    forward = (square > diagonal[:, None] + 1e-6).sum(dim=1)
    reverse = (square.t() > diagonal[:, None] + 1e-6).sum(dim=1)
    results = evaluate_retrieval(street, satellite[:9], positive, chunk_size=4, similarity=correlation)
    for direction, ranks in (("street_to_satellite", forward), ("satellite_to_street", reverse)):
        assert results[direction]["R@5"] == 100.0 * int((ranks < 5).sum()) / 9


def test_orientation_summary_counts_only_correct_top1s():
    head = DSMHead((2, 8), channels=4)
    features = torch.randn(4, 4, 2, 8)
    satellite = head(features)
    street = head(torch.roll(features, -2, dims=-1))  # heading 90 for every street
    truth = torch.tensor([90.0, 90.0, 80.0, 0.0], dtype=torch.float64)
    results = evaluate_retrieval(street, satellite, torch.tensor([0, 1, 2, 0]), similarity=head.correlation,
                                 street_heading=truth)
    # street 3's top-1 is satellite 3, not its label 0: left out; errors 0, 0, 10
    assert results["orientation"] == {"median_deg": 0.0, "within_deg": {"10": 100.0, "30": 100.0}, "queries": 3}
    assert "orientation" not in evaluate_retrieval(street, satellite, torch.arange(4), similarity=head.correlation)
    assert "orientation" not in evaluate_retrieval(satellite, satellite, torch.arange(4), street_heading=truth)


def test_triplet_loss_of_the_dot_products_is_unchanged():
    street, satellite = F.normalize(torch.randn(6, 5), dim=1), F.normalize(torch.randn(6, 5), dim=1)
    assert torch.equal(soft_margin_triplet_loss(street, satellite, hard_ratio=0.5),
                       triplet_loss_of_similarity(street @ satellite.t(), hard_ratio=0.5))


def test_dsm_model_trains_through_its_similarity_and_takes_windows():
    model = build_model({**TINY, "head": "dsm"})
    assert model.similarity is not None and build_model(TINY).similarity is None
    street, satellite = model(torch.randn(3, 3, 32, 128), torch.randn(3, 3, 64, 64))
    assert street.shape == satellite.shape == (3, DSM_CHANNELS * 4 * 16)
    sims, _ = model.similarity(street, satellite)
    triplet_loss_of_similarity(sims).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    window, _ = model(torch.randn(2, 3, 32, 32), None)  # a 90-degree field of view
    assert window.shape == (2, DSM_CHANNELS * 4 * 4)


def test_safa_head_refuses_a_window():
    with pytest.raises(UserError, match=r"street batch .* 32 x 128"):
        build_model(TINY)(torch.randn(1, 3, 32, 32), None)  # the dataset pads it (pad_fov)
