"""Gradient caching: chunked backward passes give the gradients of the whole batch."""
import pytest
import torch

from helper.distributed import DistEnv
from helper.objective import Objective, ObjectiveConfig, backward_in_chunks, compute_loss
from models import build_model

CFG = {"backbone": "tiny", "pretrained": False, "sate_size": [48, 48], "pano_size": [32, 64], "transform": "tps",
       "attention_maps": 2}
ENV = DistEnv(0, 1, 0, torch.device("cpu"))


def _gradients(model, objective):
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if objective.logit_scale is not None:
        grads["logit_scale"] = objective.logit_scale.log_scale.grad.clone()
    return grads


@pytest.mark.parametrize("loss, lambda_l1", [("triplet", 1.0), ("infonce", 1.0), ("triplet", 0.0)])
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_chunked_gradients_equal_the_whole_batch(loss, lambda_l1, chunk):
    torch.manual_seed(0)
    model = build_model(CFG).train()
    with torch.no_grad():  # off the identity, whose sampling points lie on the pixel grid, where bilinear
        # sampling has kinks: rounding (a chunk of one takes other CPU kernels) would flip their gradient
        head = model.transform.loc.head
        head.bias.add_(0.01 * torch.randn(head.bias.shape, generator=torch.Generator().manual_seed(2)))
    objective = Objective.build(ObjectiveConfig(loss=loss, lambda_l1=lambda_l1).resolved(False), model.cfg)
    generator = torch.Generator().manual_seed(1)
    batch = {"street": torch.randn(8, 3, 32, 64, generator=generator),
             "satellite": torch.randn(8, 3, 48, 48, generator=generator)}
    loss = compute_loss(objective, model, batch, ENV, hard_ratio=0.5)
    loss.total.backward()
    expected = _gradients(model, objective)
    model.zero_grad(set_to_none=True)
    for parameter in objective.parameters():
        parameter.grad = None
    chunked, finite = backward_in_chunks(objective, model, batch, ENV, 0.5, chunk)
    assert finite
    assert float(chunked.total) == pytest.approx(float(loss.total.detach()), rel=1e-6)
    assert chunked.terms.keys() == loss.terms.keys() == ({"retrieval", "l1"} if lambda_l1 else {"retrieval"})
    for name, term in loss.terms.items():
        assert float(chunked.terms[name]) == pytest.approx(float(term.detach()), rel=1e-6)
    got = _gradients(model, objective)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)
