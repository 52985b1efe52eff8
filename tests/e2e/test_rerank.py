"""Re-centred re-ranking (test_vigor.py / test_cvusa.py --rerank K) end to end on synthetic worlds."""
import json
import os
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from data.synthetic import generate_vigor
from helper import distributed
from helper.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from helper.cli import evaluate_main, format_table, train_main
from helper.config import RunConfig
from helper.engine import extract_features
from helper.metrics import streaming_ranks
from helper.rerank import RerankConfig, candidates_of, rerank_candidates, rescore
from helper.tasks import CVUSATask
from models import build_model
from tests.e2e.worlds import make_cvusa

FLAGS = ["--backbone", "tiny", "--no-pretrained", "--sate_size", "64,64", "--pano_size", "32,64",
         "--device", "cpu", "--workers", "0", "--batch_size", "3", "--n_epochs", "1", "--lr", "1e-4",
         "--cities", "NewYork,Seattle", "--transform", "polar"]
TEST = ["--device", "cpu", "--workers", "0"]
K = 4
CPU = distributed.DistEnv(0, 1, 0, torch.device("cpu"))


def _zero_offsets(model_state: dict) -> dict:
    """The offset head's last layer zeroed: it predicts (0, 0) for every pair."""
    return {key: torch.zeros_like(value) if key.startswith("offset_head.layers.2.") else value
            for key, value in model_state.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A VIGOR world, a run with an offset head (``zero.pth``: its head zeroed) and one without."""
    root = str(tmp_path_factory.mktemp("vigor"))
    generate_vigor(os.path.join(root, "data"), cities="NewYork,Seattle", train=8, test=8, seed=0, size="demo")
    runs = os.path.join(root, "runs")
    common = ["--data_root", os.path.join(root, "data"), "--results_dir", runs, *FLAGS]
    train_main("vigor", [*common, "--name", "offset", "--regress_offset"])
    train_main("vigor", [*common, "--name", "plain"])
    train_main("vigor", [*common, "--name", "dsm", "--regress_offset", "--head", "dsm"])
    for name in ("offset", "dsm"):
        state = load_checkpoint(os.path.join(runs, name, "last.pth"))
        save_checkpoint(os.path.join(runs, name, "zero.pth"), {**state, "model": _zero_offsets(state["model"])})
    return {"zero": os.path.join(runs, "offset", "zero.pth"), "trained": os.path.join(runs, "offset", "last.pth"),
            "plain": os.path.join(runs, "plain", "last.pth"), "dsm_zero": os.path.join(runs, "dsm", "zero.pth"),
            "tmp": root}


def _evaluate(checkpoint: str, path: str, *extra: str) -> dict:
    results = evaluate_main("vigor", ["--checkpoint", checkpoint, "--results_json", path, *TEST, *extra])
    assert json.load(open(path)) == json.loads(json.dumps(results))
    return results


def test_zero_offsets_reproduce_the_original_results_and_only_add_a_block(world):
    tmp = world["tmp"]
    plain = _evaluate(world["zero"], os.path.join(tmp, "plain.json"))
    results = _evaluate(world["zero"], os.path.join(tmp, "rerank.json"), "--rerank", str(K))
    block = results.pop("rerank")
    assert results.pop("view") == {**plain.pop("view"), "rerank": K, "rerank_score": "sum"}  # the view says so
    assert "rerank" not in plain and results == plain  # every other key as without --rerank
    assert set(block) == {"k", "score", "seconds", "street_to_satellite", "localization", "localization_refined",
                          "localization_top1_positive"}
    assert block["k"] == K and block["score"] == "sum" and block["seconds"] > 0
    for key in ("street_to_satellite", "localization", "localization_refined", "localization_top1_positive"):
        assert block[key] == results[key], key
    table = format_table({**results, "rerank": block})
    assert f"re-ranked top {K}" in table and "re-ranked: localization: median" in table
    assert f"{results['queries']} x {K} candidates" in table and "scored by sum" in table
    recentred = _evaluate(world["zero"], os.path.join(tmp, "recentred.json"), "--rerank", str(K), "--rerank_score",
                          "recentred")
    assert recentred["rerank"].pop("score") == "recentred" and recentred.pop("rerank")["street_to_satellite"] == \
        block["street_to_satellite"]


@pytest.mark.parametrize("score", ["sum", "recentred"])
def test_a_dsm_head_with_zero_offsets_keeps_its_results(world, score):
    """The dsm head ranks by its own similarity (max over column shifts) in the first pass and in the
    re-ranking alike, so zero offsets keep every figure."""
    results = _evaluate(world["dsm_zero"], os.path.join(world["tmp"], f"dsm_{score}.json"), "--rerank", str(K),
                        "--rerank_score", score)
    block = results.pop("rerank")
    assert block["street_to_satellite"] == results["street_to_satellite"]
    assert block["localization"] == results["localization"]


@pytest.mark.parametrize("score", ["sum", "recentred"])
def test_zero_offsets_reproduce_every_rank_and_top1_exactly(world, score):
    """Function level: the re-embedded satellites equal the original descriptors up to float noise
    (checked to be far below the gaps between candidates), so every rank and top-1 is the same
    under either score (``sum``: twice the original similarity, up to that noise)."""
    from data.vigor import VigorPanoramas, VigorSatellites

    stored, model, _ = model_from_checkpoint(world["zero"])
    run = stored.replace(workers=0, device="cpu").resolved()
    index = run.data.index("test")
    satellites = VigorSatellites(index, sate_size=run.model.sate_size, pano_size=run.model.pano_size, normalise=False)
    street = extract_features(model, VigorPanoramas(index, pano_size=run.model.pano_size, normalise=False), CPU,
                              ("street",), 5, 0)["street"]
    satellite = extract_features(model, satellites, CPU, ("satellite",), 5, 0)["satellite"]
    positive, semi = torch.as_tensor(index.positive), torch.as_tensor(index.semi)
    ranking = streaming_ranks(street, satellite, positive, exclude=semi, return_top1=True, top_k=K)
    reranked = rerank_candidates(model, street, satellite, ranking, positive, satellites, CPU, 7, 0, score,
                                 exclude=semi)
    assert torch.equal(reranked.top1_offset, torch.zeros_like(reranked.top1_offset))
    candidates = candidates_of(ranking.topk, ranking.ranks, positive)
    sims = (street @ satellite.t()).gather(1, candidates)
    assert torch.allclose(ranking.topk_similarity, sims, atol=1e-6)  # the ranking's own similarities
    scores, _ = rescore(model, street, satellite, candidates, satellites, CPU, 7, 0)
    noise, gap = float((scores - sims).abs().max()), float((sims[:, :-1] - sims[:, 1:]).abs().min())
    assert noise < 1e-5 and 10 * noise < gap  # the premise: float noise far below the gaps between candidates
    assert torch.equal(reranked.ranks, ranking.ranks)
    assert torch.equal(reranked.ranks_excluding, ranking.ranks_excluding)
    assert torch.equal(reranked.top1, ranking.top1)


def _constant_head(checkpoint: str):
    """``(model, index, satellites, satellite descriptors)``: the zeroed checkpoint's model whose
    head always predicts (0.25, -0.125), with its test satellites (uint8) and their descriptors."""
    from data.vigor import VigorSatellites

    stored, model, _ = model_from_checkpoint(checkpoint)
    run = stored.replace(workers=0, device="cpu").resolved()
    with torch.no_grad():
        model.offset_head.layers[2].bias.copy_(torch.tensor([0.25, -0.125]))
    model.eval()
    index = run.data.index("test")
    satellites = VigorSatellites(index, sate_size=run.model.sate_size, pano_size=run.model.pano_size, normalise=False)
    return model, index, satellites, extract_features(model, satellites, CPU, ("satellite",), 5, 0)["satellite"]


def test_rescoring_embeds_the_satellite_shifted_onto_the_predicted_point(world):
    """A head that always predicts (0.25, -0.125) (the camera 8 rows south, 4 columns east of the
    centre of a 64 x 64 input): each pair's score is the query's similarity to the satellite
    shifted by whole pixels with zeros moved in, embedded by the unchanged branch."""
    from helper.distributed import move_images

    model, index, satellites, satellite = _constant_head(world["zero"])
    street = satellite[torch.as_tensor(index.positive)]  # any unit vectors serve as queries
    candidates = torch.arange(6).view(2, 3)
    scores, offsets = rescore(model, street[:2], satellite, candidates, satellites, CPU, 4, 0)
    assert torch.equal(offsets, torch.tensor([0.25, -0.125]).expand(2, 3, 2))
    images = move_images({"satellite": torch.stack([satellites[j]["satellite"] for j in range(6)])}, "satellite",
                         CPU.device)
    shifted = torch.zeros_like(images)
    shifted[:, :, :-8, :-4] = images[:, :, 8:, 4:]  # output (r, c) reads input (r + 8, c + 4)
    with torch.no_grad():
        want = (street[:2].repeat_interleave(3, dim=0) * model.encode_satellite(shifted)[0]).sum(dim=1).view(2, 3)
    assert torch.allclose(scores, want, atol=1e-4)
    assert not torch.allclose(scores, (street[:2, None, :] * satellite[candidates]).sum(dim=2), atol=1e-3)


def test_the_sum_score_orders_by_the_original_plus_the_recentred_similarity(world):
    """``--rerank_score``: with the constant head, the re-ranked top-1 is the candidate of highest
    original + re-centred similarity (sum), or of highest re-centred similarity alone; both
    differ from the original order here, so the two rules are told apart."""
    model, index, satellites, satellite = _constant_head(world["zero"])
    street = satellite[torch.as_tensor(index.positive)]  # queries equal to their positive's descriptor
    positive = torch.as_tensor(index.positive)
    ranking = streaming_ranks(street, satellite, positive, top_k=K)
    candidates = candidates_of(ranking.topk, ranking.ranks, positive)
    recentred, _ = rescore(model, street, satellite, candidates, satellites, CPU, 7, 0)
    for score, want in (("sum", recentred + ranking.topk_similarity), ("recentred", recentred)):
        reranked = rerank_candidates(model, street, satellite, ranking, positive, satellites, CPU, 7, 0, score)
        assert torch.equal(reranked.top1, candidates.gather(1, want.argmax(dim=1, keepdim=True))[:, 0]), score
    sum_top1 = rerank_candidates(model, street, satellite, ranking, positive, satellites, CPU, 7, 0, "sum").top1
    alone_top1 = rerank_candidates(model, street, satellite, ranking, positive, satellites, CPU, 7, 0,
                                   "recentred").top1
    assert not torch.equal(sum_top1, alone_top1)


def test_given_query_offsets_replace_the_head(world):
    """``query_offsets``: query i's offset re-centres all of its candidates and the head is not
    consulted (a model without one re-ranks), the same scores as a head predicting those offsets."""
    model, index, satellites, satellite = _constant_head(world["zero"])
    street = satellite[torch.as_tensor(index.positive)][:2]
    candidates = torch.arange(6).view(2, 3)
    predicted, _ = rescore(model, street, satellite, candidates, satellites, CPU, 4, 0)
    given = torch.tensor([[0.25, -0.125], [0.0, 0.0]])
    model.offset_head = None  # given offsets need no head
    scores, offsets = rescore(model, street, satellite, candidates, satellites, CPU, 4, 0, query_offsets=given)
    assert torch.equal(offsets, given[:, None, :].expand(2, 3, 2))
    assert torch.allclose(scores[0], predicted[0], atol=1e-5)
    assert torch.allclose(scores[1], (street[1] * satellite[candidates[1]]).sum(dim=1), atol=1e-5)


def test_a_trained_offset_head_reorders_only_within_the_candidates(world):
    """Re-ranking the top 10 keeps R@10 (a positive among them stays among them) and every key."""
    results = _evaluate(world["trained"], os.path.join(world["tmp"], "trained.json"), "--rerank", "10")
    before, after = results["street_to_satellite"], results["rerank"]["street_to_satellite"]
    assert set(after) == set(before) and after["R@10"] == before["R@10"]


def test_rerank_without_an_offset_head_is_one_clear_error(world):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "test_vigor.py", "--checkpoint", world["plain"], "--rerank", "3",
                          "--results_json", os.path.join(world["tmp"], "none.json"), *TEST],
                         cwd=repo, capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "has none" in out.stderr
    assert not os.path.exists(os.path.join(world["tmp"], "none.json"))


def test_rerank_of_more_candidates_than_references_is_an_error(world):
    with pytest.raises(UserError, match="more than the .* references"):
        evaluate_main("vigor", ["--checkpoint", world["zero"], "--rerank", "100000", *TEST,
                                "--results_json", os.path.join(world["tmp"], "big.json")])


def test_cvusa_rerank_with_a_zeroed_offset_head(tmp_path):
    """The CVUSA task's path with a zeroed offset head (a trained one: tests/e2e/test_cvusa_offsets.py)."""
    root = make_cvusa(str(tmp_path / "cvusa"), n_train=4, n_val=12)
    run = RunConfig.from_dict({"dataset": "cvusa", "data_root": root, "backbone": "tiny", "pretrained": False,
                               "sate_size": [64, 64], "pano_size": [32, 176], "transform": "polar",
                               "device": "cpu", "workers": 0}).resolved()
    torch.manual_seed(0)
    model = build_model(run.model.replace(regress_offset=True))
    model.load_state_dict(_zero_offsets(model.state_dict()))
    results = CVUSATask().evaluate(run, model, CPU, rerank=RerankConfig(3))
    block = results.pop("rerank")
    assert set(block) == {"k", "score", "seconds", "street_to_satellite"} and block["k"] == 3
    assert block["street_to_satellite"] == results["street_to_satellite"]
    assert "ranking" not in results and "rerank" not in CVUSATask().evaluate(run, model, CPU)


@pytest.mark.parametrize("script", ["test_vigor.py", "test_cvusa.py"])
def test_help_shows_the_rerank_default(script):
    from helper.parser import build_test_parser

    text = " ".join(build_test_parser(script[5:-3]).format_help().split())
    assert "--rerank N" in text and "0 = off) (default: 0)" in text
    assert "--rerank_score {sum,recentred,pose}" in text and "--pose dense) (default: sum)" in text


def test_rerank_score_without_rerank_is_an_error(world, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate_main("vigor", ["--checkpoint", world["zero"], "--rerank_score", "recentred", *TEST])
    assert stop.value.code == 2 and "--rerank_score scores the candidates of --rerank K" in capsys.readouterr().err
