"""Re-centred re-ranking with the true offsets: what ``--rerank K`` gives with a perfect offset head.

On a CVUSA-layout world with ``offsets.csv`` (synthetic, ``--max_offset F``) or a VIGOR-layout one
(every label carries the offset), each query's top K satellites are re-centred
(:mod:`helper.rerank`) on the query's TRUE camera position in its positive for every candidate
(what a perfect head would predict for the positive), and, when the checkpoint has an offset head,
on the head's predictions, as ``test_cvusa.py`` / ``test_vigor.py --rerank K`` do. Also reports the
head's mean squared error on the positive pairs (normalised deltas) next to that of the best
constant (the mean offset) and of zero, and its positives-known errors as the ``pose`` block of
the test scripts (``offset_positives``: metres on VIGOR, aerial pixels on the CVUSA layout, with
the tile centre's). Prints one JSON line (VIGOR adds the hit rates).

    python experiments/rerank_true_offsets.py --checkpoint RUN/best.pth --data_root WORLD [--rerank 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.errors import UserError, run_main  # noqa: E402
from data.cvusa import CVUSA, CVUSASatellites  # noqa: E402
from data.vigor import VigorPanoramas, VigorSatellites  # noqa: E402
from data.vigor_layout import TILE_SIDE  # noqa: E402
from helper import distributed  # noqa: E402
from helper.checkpoint import model_from_checkpoint  # noqa: E402
from helper.config import RunConfig  # noqa: E402
from helper.engine import extract_features  # noqa: E402
from helper.metrics import evaluate_retrieval  # noqa: E402
from helper.offsets import city_metres_per_pixel, predict_offsets  # noqa: E402
from helper.pose import pose_results  # noqa: E402
from helper.rerank import RECENTRED_SCORES, RerankConfig, check_rerank_size, rerank_candidates  # noqa: E402
from models.offset import delta_pixels, normalise_delta  # noqa: E402


def r1(ranks: torch.Tensor) -> float:
    return round(100.0 * (ranks < 1).double().mean().item(), 2)


def cvusa_split(run: RunConfig, args, model, env) -> dict:
    """The CVUSA-layout test split: descriptors, positives, satellites and true normalised offsets."""
    dataset = CVUSA(run.data.data_root, run.data.val_csv, run.model.sate_size, run.model.pano_size,
                    offsets_csv=args.offsets_csv)
    check_rerank_size(args.rerank, len(dataset))
    desc = extract_features(model, dataset, env, ("street", "satellite"), run.train.eval_batch_size, args.workers)
    return {"street": desc["street"], "satellite": desc["satellite"], "positive": torch.arange(len(dataset)),
            "exclude": None, "satellites": CVUSASatellites(dataset),
            "true": normalise_delta(torch.as_tensor(dataset.deltas, dtype=torch.float32), dataset.tile_side),
            "truth_px": dataset.deltas, "tile_side": dataset.tile_side, "scale": 1.0, "unit": "px"}


def vigor_split(run: RunConfig, args, model, env) -> dict:
    """The VIGOR test split: the same, the semi-positives excluded by the hit rate."""
    index = run.data.index("test")
    check_rerank_size(args.rerank, index.num_satellites)
    satellites = VigorSatellites(index, sate_size=run.model.sate_size, pano_size=run.model.pano_size, normalise=False)
    batch_size = run.train.eval_batch_size
    panoramas = VigorPanoramas(index, pano_size=run.model.pano_size, normalise=False)
    return {"street": extract_features(model, panoramas, env, ("street",), batch_size, args.workers)["street"],
            "satellite": extract_features(model, satellites, env, ("satellite",), batch_size,
                                          args.workers)["satellite"],
            "positive": torch.as_tensor(index.positive), "exclude": torch.as_tensor(index.semi),
            "satellites": satellites,
            "true": normalise_delta(torch.as_tensor(index.deltas[:, 0], dtype=torch.float32), TILE_SIDE),
            "truth_px": index.deltas[:, 0], "tile_side": TILE_SIDE,
            "scale": city_metres_per_pixel(index)[index.street_city], "unit": "m"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data_root", required=True, help="the world (CVUSA layout: with offsets.csv)")
    parser.add_argument("--offsets_csv", default="offsets.csv", help="CVUSA layout: the offset labels")
    parser.add_argument("--rerank", type=int, default=10)
    parser.add_argument("--rerank_score", choices=RECENTRED_SCORES, default=RerankConfig.rerank_score,
                        help="as test_cvusa.py / test_vigor.py --rerank_score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    if args.rerank < 1:
        parser.error(f"--rerank is the number of candidates re-ranked per query (at least 1), got {args.rerank}")
    run, model, _ = model_from_checkpoint(args.checkpoint)
    if run.model.polar_files:
        raise UserError(f"{args.checkpoint} reads precomputed polar images (polar_files), which cannot be re-centred")
    run = run.replace(data_root=args.data_root, device=args.device, workers=args.workers, amp="none").resolved()
    env = distributed.setup(run.train.device)
    model = distributed.wrap_model(model, env)
    split = (cvusa_split if run.dataset == "cvusa" else vigor_split)(run, args, model, env)
    street, satellite = split["street"].to(env.device), split["satellite"].to(env.device)
    positive, true = split["positive"].to(env.device), split["true"]
    exclude = None if split["exclude"] is None else split["exclude"].to(env.device)
    ranking = evaluate_retrieval(street, satellite, positive, semi_positive=exclude,
                                 similarity=distributed.unwrap(model).similarity, top_k=args.rerank)["ranking"]

    def recalls(ranks, ranks_excluding) -> dict:
        out = {"R@1": r1(ranks)}
        if ranks_excluding is not None:
            out["hit_rate"] = r1(ranks_excluding)
        return out

    def reranked(query_offsets=None) -> dict:
        result = rerank_candidates(model, street, satellite, ranking, positive, split["satellites"], env,
                                   run.train.eval_batch_size, args.workers, args.rerank_score, exclude=exclude,
                                   query_offsets=query_offsets)
        return recalls(result.ranks, result.ranks_excluding)

    def suffixed(values: dict, suffix: str) -> dict:
        return {f"{key}_{suffix}": value for key, value in values.items()}

    out = {"checkpoint": os.path.abspath(args.checkpoint), **recalls(ranking.ranks, ranking.ranks_excluding),
           "rerank": {"k": args.rerank, "score": args.rerank_score,
                      **suffixed(reranked(true.to(env.device)), "true_offsets")}}
    mse = lambda pred: round(float(((pred - true) ** 2).sum(dim=1).mean()), 5)  # noqa: E731
    out["offset_mse"] = {"mean_offset": mse(true.mean(dim=0)), "zero": mse(torch.zeros(2))}
    if run.model.regress_offset:
        out["rerank"].update(suffixed(reranked(), "predicted_offsets"))
        head = predict_offsets(distributed.unwrap(model), street, satellite, positive).cpu()
        out["offset_mse"]["head"] = mse(head)
        out["offset_positives"] = pose_results(delta_pixels(head.double(), split["tile_side"]).numpy(),
                                               split["truth_px"], split["scale"], split["unit"])
    print(json.dumps(out))


if __name__ == "__main__":
    run_main(main)
