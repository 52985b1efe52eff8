"""The dense pose head: decoding conventions, a constructed pair, gradients, a centred world."""
import pytest
import torch
import torch.nn.functional as F

from helper.pose import pose_loss
from models.pose import MIN_CELLS, POSITION_DIM, RADII, PoseHead, cell_grid


def test_cell_grid_is_the_stride_4_map():
    assert [cell_grid(s) for s in (64, 96, 97, 128, 256, 320)] == [16, 24, 25, 32, 64, 80]
    with pytest.raises(ValueError, match="at least 16"):
        PoseHead(8, 60)


@pytest.mark.parametrize("delta", [(0.3, -0.5), (0.0, 0.0), (-0.77, 0.12)])
def test_position_decodes_its_own_target(delta):
    head = PoseHead(8, 96)
    d = torch.tensor([delta])
    logits = torch.log(head.position_target(d) + 1e-30)
    assert torch.allclose(head.decode_position(logits), d, atol=1e-5)


@pytest.mark.parametrize("heading", [0.0, 100.0, 359.0, 7.3])
def test_heading_decodes_its_own_target(heading):
    logits = torch.log(PoseHead.heading_target(torch.tensor([heading]), 22) + 1e-30)
    assert float(PoseHead.decode_heading(logits)) == pytest.approx(heading, abs=1e-4)


def test_constructed_pair_peaks_at_its_cell():
    """Cells hold random unit descriptors, one of them the panorama's: the distribution peaks there and
    the estimate is that cell's centre (its neighbours are equally unlike it)."""
    head = PoseHead(8, 64)
    g = head.cells
    torch.manual_seed(0)
    cells = F.normalize(torch.randn(1, POSITION_DIM, g, g), dim=1)
    street = F.normalize(torch.randn(1, POSITION_DIM), dim=1)
    row, col = 5, 11
    cells[0, :, row, col] = street[0]
    logits = head.position_logits(street, cells)
    assert int(logits.argmax()) == row * g + col
    delta = head.decode_position(logits)[0]
    # the cell centre in normalised deltas (models.pose: row S/2 (1 + d0), column S/2 (1 - d1))
    centre = torch.tensor([2 * (row + 0.5) / g - 1, 1 - 2 * (col + 0.5) / g])
    assert torch.allclose(delta, centre, atol=0.5 / g)


def test_constructed_heading_is_the_roll():
    """A panorama's column features are the aerial panorama at its point rolled left by k columns:
    the estimate is k 360 / w degrees (geometry.heading)."""
    head = PoseHead(8, 64)
    torch.manual_seed(1)
    heading_map = torch.randn(1, 16, head.cells, head.cells)
    delta = torch.tensor([[0.2, -0.1]])
    width, k = 24, 7
    aerial = head.aerial_panorama(heading_map, delta, width)
    columns = torch.roll(aerial, -k, dims=2)
    logits = head.heading_logits(columns, aerial).detach()
    assert int(logits.argmax()) == k
    assert float(head.decode_heading(logits)) == pytest.approx(k * 360 / width, abs=1.0)


def test_aerial_panorama_looks_north_at_the_centre_column():
    """The ray of column w/2 (azimuth 180/w from north) from the tile centre reads the rows above it."""
    head = PoseHead(8, 64)
    g = head.cells
    heading_map = torch.zeros(1, 16, g, g)
    heading_map[:, :, : g // 2 - 1, g // 2 - 1: g // 2 + 1] = 1.0  # a north-pointing bar
    aerial = head.aerial_panorama(heading_map, torch.zeros(1, 2), 64)
    energy = aerial.view(1, 16, len(RADII), 64).abs().sum(dim=(0, 1, 2))
    assert int(energy.argmax()) in (31, 32)


def _embeddings(head, features, satellite):
    return head.embed_street(features), head.embed_satellite(satellite)


def test_gradient_reaches_both_branches():
    head = PoseHead(8, 64)
    features = torch.randn(3, 8, 4, 16, requires_grad=True)
    satellite = torch.randn(3, 3, 64, 64, requires_grad=True)
    street, tiles = _embeddings(head, features, satellite)
    loss = pose_loss(head, street, tiles, torch.rand(3, 2) - 0.5, torch.tensor([10.0, 200.0, 300.0]))
    loss.backward()
    assert features.grad.abs().sum() > 0 and satellite.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trained_on_a_centred_world_predicts_the_centre():
    """Every pair's label is the tile centre: a few steps teach the head to put its peak there."""
    torch.manual_seed(0)
    head = PoseHead(8, 64)
    street_net = torch.nn.Conv2d(3, 8, 3, stride=8, padding=1)
    optimiser = torch.optim.Adam(list(head.parameters()) + list(street_net.parameters()), lr=3e-3)
    for _ in range(40):
        street = head.embed_street(street_net(torch.randn(8, 3, 32, 128)))
        tiles = head.embed_satellite(torch.randn(8, 3, 64, 64))
        loss = pose_loss(head, street, tiles, torch.zeros(8, 2))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        street = head.embed_street(street_net(torch.randn(16, 3, 32, 128)))
        delta, _, _ = head.predict(street, head.embed_satellite(torch.randn(16, 3, 64, 64)))
    assert delta.abs().max() < 1.0 / head.cells  # within half a cell of the centre


def test_tile_logits_are_the_pairwise_logsumexp():
    head = PoseHead(8, 64)
    street = F.normalize(torch.randn(3, POSITION_DIM), dim=1)
    cells = F.normalize(torch.randn(2, POSITION_DIM, head.cells, head.cells), dim=1)
    matrix = head.tile_logits(street, cells)
    for i in range(3):
        for j in range(2):
            pair = head.position_logits(street[i:i + 1], cells[j:j + 1])
            assert float(matrix[i, j]) == pytest.approx(float(torch.logsumexp(pair, dim=1)), rel=1e-5)


def test_the_default_model_has_no_pose_parameters():
    from models import DEFAULT_CONFIG, build_model

    assert DEFAULT_CONFIG["pose"] == "none"
    model = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128)))
    assert model.pose_head is None and not any("pose" in name for name, _ in model.named_parameters())
    dense = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128),
                             pose="dense"))
    assert dense.pose_head.cells == 16


@pytest.mark.parametrize("settings,message", [
    (dict(sate_size=(64, 96)), "square --sate_size"),
    (dict(sate_size=(56, 56)), "at least 61 pixels"),
    (dict(polar_files=True), "raw satellite tile"),
])
def test_pose_settings_it_cannot_use_are_refused(settings, message):
    from common.errors import UserError
    from models.config import ModelConfig

    with pytest.raises(UserError, match=message):
        ModelConfig(**{"pose": "dense", "sate_size": (64, 64), **settings})


def test_model_forward_gives_the_pairs_pose_embeddings():
    from models import build_model

    torch.manual_seed(0)
    model = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128),
                             pose="dense"))
    street, satellite = torch.randn(2, 3, 32, 128), torch.randn(3, 3, 64, 64)  # a semi-positive appended
    _, _, aux = model(street, satellite, return_aux=True)
    pano, tiles = aux["pose"]
    assert pano.street.shape == (2, POSITION_DIM) and tiles.cells.shape == (2, POSITION_DIM, 16, 16)
    assert torch.allclose(pano.street, model.pose_street(street).street)
    assert torch.allclose(tiles.cells, model.pose_head.embed_satellite(satellite[:2]).cells)
