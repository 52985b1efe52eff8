"""The dense pose head: decoding conventions, constructed pairs, gradients, a centred world."""
import pytest
import torch
import torch.nn.functional as F

from helper.pose import pose_loss
from models.pose import CHANNELS, COLUMNS, RADII, PoseEmbedding, PoseHead, cell_grid


def test_cell_grid_is_the_stride_4_map_up_to_32():
    assert [cell_grid(s) for s in (64, 96, 97, 128, 256, 640)] == [16, 24, 25, 32, 32, 32]
    with pytest.raises(ValueError, match="at least 16"):
        PoseHead(60)


@pytest.mark.parametrize("delta", [(0.3, -0.5), (0.0, 0.0), (-0.77, 0.12)])
def test_position_decodes_its_own_target(delta):
    head = PoseHead(96)
    d = torch.tensor([delta])
    logits = torch.log(head.position_target(d) + 1e-30)
    assert torch.allclose(head.decode_position(logits), d, atol=1e-5)


@pytest.mark.parametrize("heading", [0.0, 100.0, 359.0, 7.3])
def test_heading_decodes_its_own_target(heading):
    logits = torch.log(PoseHead.heading_target(torch.tensor([heading])) + 1e-30)
    assert float(PoseHead.decode_heading(logits)) == pytest.approx(heading, abs=1e-4)


def _tile_with_a_pattern(head, seed=0):
    """A tile map of random unit features (at the stride-4 resolution of a 64 px tile)."""
    torch.manual_seed(seed)
    return F.normalize(torch.randn(1, CHANNELS, head.cells, head.cells), dim=1)


def _strip_at(head, tiles, delta, heading_deg=0.0):
    """The strip a panorama of ``heading_deg`` taken at ``delta`` would have if it saw exactly the tile's
    aerial panorama there: that panorama rolled left by the heading's shift (models.pose)."""
    aerial = head.aerial_panoramas(tiles, head.point(delta))[:, :, :, 0]
    k = round(heading_deg * COLUMNS / 360)
    return F.normalize(torch.roll(aerial, -k, dims=3), dim=1)


def test_constructed_pair_peaks_at_its_cell():
    """The panorama is the aerial panorama of one cell centre: the heading marginal peaks at that cell
    and the estimate is within a fraction of a cell of its centre."""
    head = PoseHead(64)
    g = head.cells
    tiles = _tile_with_a_pattern(head)
    row, col = 5, 11
    delta = torch.tensor([[2 * (row + 0.5) / g - 1, 1 - 2 * (col + 0.5) / g]])  # models.pose: row, column
    street = PoseEmbedding(strip=_strip_at(head, tiles, delta))
    with torch.no_grad():
        logits = head.cell_logits(street, PoseEmbedding(tiles=tiles))
        assert int(torch.logsumexp(logits, dim=2).argmax()) == row * g + col
        assert int(logits[0, row * g + col].argmax()) == 0  # north-aligned: shift 0
        estimate, heading, _ = head.predict(street, PoseEmbedding(tiles=tiles))
    assert torch.allclose(estimate[0], delta[0], atol=0.5 / g)
    assert min(float(heading), 360 - float(heading)) < 360 / COLUMNS / 2


@pytest.mark.parametrize("k", [5, 19])
def test_constructed_heading_is_the_roll(k):
    """The panorama's strip is the aerial panorama at its point rolled left by k columns: the estimate
    is k 360 / COLUMNS degrees (geometry.heading), and the rolled-back strip scores the point at shift 0."""
    head = PoseHead(64)
    tiles = _tile_with_a_pattern(head, seed=1)
    delta = torch.tensor([[0.2, -0.1]])
    heading = k * 360 / COLUMNS
    strip = _strip_at(head, tiles, delta, heading)
    with torch.no_grad():
        logits = head.point_logits(PoseEmbedding(strip=strip), PoseEmbedding(tiles=tiles), delta)
        assert int(logits.argmax()) == k
        assert float(head.decode_heading(logits)) == pytest.approx(heading, abs=1.0)
        north = head.rolled(strip, torch.tensor([heading]))
        assert torch.allclose(north, _strip_at(head, tiles, delta), atol=1e-6)


def test_joint_logits_are_the_brute_force_correlation():
    """pair_logits against the sum over radii and columns of the rolled dot products."""
    head = PoseHead(64)
    torch.manual_seed(2)
    strip = F.normalize(torch.randn(2, CHANNELS, len(RADII), COLUMNS), dim=1)
    aerial = torch.randn(2, CHANNELS, len(RADII), 3, COLUMNS)
    with torch.no_grad():
        logits = head.pair_logits(strip, aerial)
        scale = float(head.scale())
    for b in range(2):
        for p in range(3):
            for k in (0, 1, 7, COLUMNS - 1):
                brute = (strip[b] * torch.roll(aerial[b, :, :, p], -k, dims=2)).sum() / (len(RADII) * COLUMNS)
                assert float(logits[b, p, k]) == pytest.approx(scale * float(brute), rel=1e-4, abs=1e-5)


def test_aerial_panorama_looks_north_at_the_centre_column():
    """The ray of column COLUMNS/2 (azimuth 180/COLUMNS from north) from the tile centre reads the rows above it."""
    head = PoseHead(64)
    g = head.cells
    tiles = torch.zeros(1, CHANNELS, g, g)
    tiles[:, :, : g // 2 - 1, g // 2 - 1: g // 2 + 1] = 1.0  # a north-pointing bar
    aerial = head.aerial_panoramas(tiles, head.point(torch.zeros(1, 2)))
    energy = aerial.abs().sum(dim=(0, 1, 2, 3))
    assert int(energy.argmax()) in (COLUMNS // 2 - 1, COLUMNS // 2)


def test_tile_logits_are_the_pairwise_logsumexp_at_the_heading():
    head = PoseHead(64)
    torch.manual_seed(3)
    strip = F.normalize(torch.randn(3, CHANNELS, len(RADII), COLUMNS), dim=1)
    tiles = F.normalize(torch.randn(2, CHANNELS, head.cells, head.cells), dim=1)
    heading = torch.tensor([0.0, 45.0, 292.5])  # whole shifts (11.25 degrees each)
    with torch.no_grad():
        matrix = head.tile_logits(head.rolled(strip, heading), head.cell_panoramas(PoseEmbedding(tiles=tiles)))
        for i in range(3):
            for j in range(2):
                pair = head.cell_logits(PoseEmbedding(strip=strip[i:i + 1]), PoseEmbedding(tiles=tiles[j:j + 1]))
                k = int(round(float(heading[i]) * COLUMNS / 360)) % COLUMNS
                assert float(matrix[i, j]) == pytest.approx(float(torch.logsumexp(pair[0, :, k], dim=0)), rel=1e-4)


def test_gradient_reaches_both_branches():
    head = PoseHead(64)
    panoramas = torch.randn(3, 3, 32, 128, requires_grad=True)
    satellite = torch.randn(3, 3, 64, 64, requires_grad=True)
    street, tiles = head.embed_street(panoramas), head.embed_satellite(satellite)
    loss = pose_loss(head, street, tiles, torch.rand(3, 2) - 0.5, torch.tensor([10.0, 200.0, 300.0]))
    loss.backward()
    assert panoramas.grad.abs().sum() > 0 and satellite.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trained_on_a_centred_world_predicts_the_centre():
    """Every pair's label is the tile centre: a few steps teach the head to put its peak there."""
    torch.manual_seed(0)
    head = PoseHead(64)
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(30):
        street, tiles = head.embed_street(torch.randn(8, 3, 32, 128)), head.embed_satellite(torch.randn(8, 3, 64, 64))
        loss = pose_loss(head, street, tiles, torch.zeros(8, 2))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        delta, _, _ = head.predict(head.embed_street(torch.randn(16, 3, 32, 128)),
                                   head.embed_satellite(torch.randn(16, 3, 64, 64)))
    assert delta.abs().max() < 1.0 / head.cells  # within half a cell of the centre


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


def test_model_forward_gives_the_pairs_pose_embeddings_from_the_raw_inputs():
    from models import build_model

    torch.manual_seed(0)
    model = build_model(dict(backbone="tiny", pretrained=False, sate_size=(64, 64), pano_size=(32, 128),
                             pose="dense"))
    street, satellite = torch.randn(2, 3, 32, 128), torch.randn(3, 3, 64, 64)  # a semi-positive appended
    _, _, aux = model(street, satellite, return_aux=True)
    pano, tiles = aux["pose"]
    assert pano.strip.shape == (2, CHANNELS, len(RADII), COLUMNS) and tiles.tiles.shape == (3, CHANNELS, 16, 16)
    assert torch.allclose(pano.strip, model.pose_street(street).strip)
    assert torch.allclose(tiles.tiles, model.pose_head.embed_satellite(satellite).tiles)
    shared = {id(p) for m in (model.street_backbone, model.satellite_backbone, model.transform) for p in m.parameters()}
    assert not shared & {id(p) for p in model.pose_head.parameters()}  # its own encoders
