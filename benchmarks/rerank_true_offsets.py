"""Re-centred re-ranking with the true offsets: what ``--rerank K`` gives with a perfect offset head.

On a CVUSA-layout world with ``offsets.csv`` (synthetic, ``--max_offset F``), each query's top K
aerials are re-centred (:mod:`helper.rerank`) on the query's TRUE camera position for every
candidate (what a perfect head would predict for the positive), and, when the checkpoint has an
offset head, on the head's predictions, as ``test_cvusa.py --rerank K`` does. Also reports the
head's mean squared error on the positive pairs (normalised deltas) next to that of the best
constant (the mean offset) and of zero. Prints one JSON line.

    python benchmarks/rerank_true_offsets.py --checkpoint RUN/best.pth --data_root WORLD [--rerank 10]
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
from helper import distributed  # noqa: E402
from helper.checkpoint import load_checkpoint, load_model_state  # noqa: E402
from helper.config import RunConfig  # noqa: E402
from helper.engine import extract_features  # noqa: E402
from helper.metrics import evaluate_retrieval  # noqa: E402
from helper.offsets import predict_offsets  # noqa: E402
from helper.rerank import check_rerank_size, rerank_candidates  # noqa: E402
from models import build_model  # noqa: E402


def r1(ranks: torch.Tensor) -> float:
    return round(100.0 * (ranks < 1).double().mean().item(), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data_root", required=True, help="the CVUSA-layout world (with offsets.csv)")
    parser.add_argument("--offsets_csv", default="offsets.csv")
    parser.add_argument("--rerank", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint)
    run = RunConfig.from_dict(state["config"], complete=True)
    if run.dataset != "cvusa":
        raise UserError(f"{args.checkpoint} is a {run.dataset} checkpoint; this benchmark needs a CVUSA-layout one")
    if run.model.polar_files:
        raise UserError(f"{args.checkpoint} reads precomputed polar images (polar_files), which cannot be re-centred")
    run = run.replace(data_root=args.data_root, device=args.device, workers=args.workers, amp="none").resolved()
    env = distributed.setup(run.train.device)
    model = build_model(run.model.replace(pretrained=False))
    load_model_state(model, state["model"], args.checkpoint)
    model = distributed.wrap_model(model, env)
    dataset = CVUSA(run.data.data_root, run.data.val_csv, run.model.sate_size, run.model.pano_size,
                    offsets_csv=args.offsets_csv)
    check_rerank_size(args.rerank, len(dataset))
    batch_size = run.train.eval_batch_size
    desc = extract_features(model, dataset, env, ("street", "satellite"), batch_size, args.workers)
    street, satellite = desc["street"].to(env.device), desc["satellite"].to(env.device)
    positive = torch.arange(len(dataset), device=env.device)
    ranking = evaluate_retrieval(street, satellite, positive, top_k=args.rerank)["ranking"]
    true = torch.as_tensor(dataset.deltas, dtype=torch.float32) / (dataset.tile_side / 2)
    satellites = CVUSASatellites(dataset)
    rerank = {"k": args.rerank}

    def reranked(query_offsets=None) -> float:
        return r1(rerank_candidates(model, street, satellite, ranking, positive, satellites, env, batch_size,
                                    args.workers, query_offsets=query_offsets).ranks)

    out = {"checkpoint": os.path.abspath(args.checkpoint), "R@1": r1(ranking.ranks),
           "rerank": {**rerank, "R@1_true_offsets": reranked(true.to(env.device))}}
    mse = lambda pred: round(float(((pred - true) ** 2).sum(dim=1).mean()), 5)  # noqa: E731
    out["offset_mse"] = {"mean_offset": mse(true.mean(dim=0)), "zero": mse(torch.zeros(2))}
    if run.model.regress_offset:
        out["rerank"]["R@1_predicted_offsets"] = reranked()
        out["offset_mse"]["head"] = mse(predict_offsets(distributed.unwrap(model), street, satellite, positive).cpu())
    print(json.dumps(out))


if __name__ == "__main__":
    run_main(main)
