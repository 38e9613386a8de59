"""The resumable training loop: a run interrupted and resumed from its checkpoint equals an uninterrupted run."""

import torch

from specdec.testbed.checkpoint import EpochOrder, lr_at, train_loop


def _run(tmp_path, stop_after=None, total=12):
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randn(40, 4)
    order = EpochOrder(len(data), 8, seed=5)

    class Killed(Exception):
        pass

    def loss_fn(step):
        if stop_after is not None and step == stop_after:
            raise Killed
        loss = model(data[order.indices(step)] + 0.1 * torch.randn(8, 4)).pow(2).mean()
        return loss, {"loss": loss.item()}

    try:
        train_loop("t", model, opt, loss_fn, total_steps=total, lr=1e-2, ckpt_path=tmp_path / "c.pt", seed=3,
                   ckpt_every_s=0.0, log_every=4)
    except Killed:
        return None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_reproduces_uninterrupted_run(tmp_path):
    straight = _run(tmp_path / "a")
    assert _run(tmp_path / "b", stop_after=7) is None  # killed mid-run; checkpoint of step 7 remains
    resumed = _run(tmp_path / "b")
    torch.testing.assert_close(resumed, straight, atol=0, rtol=0)
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_schedule_and_order():
    assert lr_at(0, 100, 1.0) == 0.1 and abs(lr_at(10, 100, 1.0) - 1.0) < 1e-9 and lr_at(99, 100, 1.0) < 0.06
    order = EpochOrder(10, 3, seed=0)
    first = torch.cat([order.indices(s) for s in range(3)])
    assert len(set(first.tolist())) == 9  # an epoch visits distinct samples
    assert torch.equal(EpochOrder(10, 3, seed=0).indices(4), order.indices(4))
