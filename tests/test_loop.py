"""The shared epoch loop: any TrainingStep gets epoch figures, the callback and resumable
progress from it, without writing them itself."""

import pytest
import torch
from torch import nn

from hcibench.run.stages import StageCache
from hcibench.train.loop import TrainingStep, optimise, run_epochs


class LinearFit(TrainingStep):
    """Least squares on random batches: the smallest training a loop can drive."""

    description = "linear fit"

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.model = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.epochs_ended = 0

    def modules(self):
        return {"model": self.model}

    def batches(self, epoch, generator):
        order = torch.randperm(len(self.x), generator=generator)
        return list(enumerate(order.split(8)))

    def update(self, batch, epoch, step):
        index, batch = batch
        if index == 4:
            return None  # a batch that gives no update is not counted
        loss = ((self.model(self.x[batch]) - self.y[batch]) ** 2).mean()
        optimise(loss, self.optimizer, self.model.parameters())
        return {"loss": loss.detach()}

    def end_epoch(self, epoch, figures):
        self.epochs_ended += 1

    def progress_state(self):
        return self.epochs_ended

    def load_progress_state(self, state):
        self.epochs_ended = state


def _fit(kill_after=None):
    torch.manual_seed(0)
    step = LinearFit()
    seen = []

    def on_epoch(epoch):
        seen.append((epoch, step.model.training))
        if epoch == kill_after:
            raise KeyboardInterrupt

    figures = run_epochs(step, 6, torch.Generator().manual_seed(1), on_epoch=on_epoch)
    return {
        "weight": step.model.weight.detach().clone(),
        "figures": figures,
        "ended": step.epochs_ended,
        "seen": seen,
    }


def test_the_loop_averages_figures_over_updates_and_calls_back_in_eval_mode():
    result = _fit()
    losses = result["figures"].curve("loss")
    assert len(losses) == 6 and losses[-1] < losses[0] / 10
    assert result["figures"].steps == 6 * 5 - 6  # every fifth batch gave no update
    assert result["ended"] == 6
    assert result["seen"] == [(epoch, False) for epoch in range(1, 7)]


def test_a_killed_loop_goes_on_from_its_saved_progress_bitwise(tmp_path, monkeypatch):
    monkeypatch.setenv("HCIBENCH_CHECKPOINT_SECONDS", "0")

    def compute(kill_after=None):
        result = _fit(kill_after)
        return {
            "weight": result["weight"],
            "losses": result["figures"].curve("loss"),
            "ended": result["ended"],
        }

    reference = StageCache(tmp_path / "whole").get("fit", {"k": 1}, compute)
    with pytest.raises(KeyboardInterrupt):
        StageCache(tmp_path / "killed").get("fit", {"k": 1}, lambda: compute(kill_after=3))
    resumed = StageCache(tmp_path / "killed").get("fit", {"k": 1}, compute)
    assert resumed["losses"] == reference["losses"]
    assert resumed["ended"] == 6  # the step's own state came back with the progress
    assert torch.equal(resumed["weight"], reference["weight"])


def test_saved_progress_of_another_layout_is_not_resumed_from(tmp_path, monkeypatch):
    from hcibench.train import loop

    monkeypatch.setenv("HCIBENCH_CHECKPOINT_SECONDS", "0")
    monkeypatch.setattr(loop, "PROGRESS_FORMAT", 1)
    with pytest.raises(KeyboardInterrupt):
        StageCache(tmp_path).get("fit", {"k": 1}, lambda: _fit(kill_after=3)["ended"])
    monkeypatch.setattr(loop, "PROGRESS_FORMAT", 2)
    messages = []
    torch.manual_seed(0)
    step = LinearFit()

    class Logged:
        def track(self, items, total=None, description=""):
            yield from items

        def log(self, message):
            messages.append(message)

    def compute_logged():
        return run_epochs(step, 6, torch.Generator().manual_seed(1), Logged()).steps

    assert StageCache(tmp_path).get("fit", {"k": 1}, compute_logged) == 24  # all six epochs
    assert any("another version" in m for m in messages)
    assert not any("going on from" in m for m in messages)
