"""Every registered method keeps the method contract, on tiny data, with the settings the runner
resolves for it: predictions of the right shape, the same when asked twice, and a fitted state
that predicting leaves untouched."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_dual import TINY_DUAL

from hcibench import plugins
from hcibench.run import presets, runner
from hcibench.run.stages import Context, StageCache

TINY_SETTINGS = [*TINY, *TINY_DUAL, "mae.epochs=1", "mae.decoder_dim=16", "mae.decoder_heads=2"]
EXTRA = {"supervised": ["supervised.epochs=1"], "ttt": ["ttt.steps=1", "ttt.copies=2"]}


def _tensors(module_like) -> dict:
    """Every tensor a fitted method holds in its modules, by attribute and name."""
    found = {}
    for attribute, value in vars(module_like).items():
        if isinstance(value, torch.nn.Module):
            for name, tensor in value.state_dict().items():
                found[f"{attribute}.{name}"] = tensor.clone()
    return found


def _tiny_settings(name: str) -> list[str]:
    """The tiny settings of the sections this method's run has (core, dataset, its own)."""
    cls = plugins.methods().get(name)
    sections = {*presets.build("quick"), *cls.settings_sections("quick"), "dataset", name}
    return [item for item in [*TINY_SETTINGS, *EXTRA.get(name, [])] if item.split(".")[0] in sections]


@pytest.mark.parametrize("name", sorted(plugins.methods().names()))
def test_every_method_keeps_the_contract(name):
    spec = runner.RunSpec(
        runner.Grid([name], ["S8"], ["S11"]), Path("unused"), overrides=_tiny_settings(name)
    )
    run = runner.prepare(spec)
    domains = runner.DomainCache(run)
    split = domains.split("S8")
    target = domains.target("S8", "S11")
    context = Context(run.config, seed=0, source="S8", stages=StageCache(None, keep_in_memory=50))
    method = run.method_classes[name](context)
    method.fit(split.train, split.val)
    fitted = _tensors(method)
    first = method.predict(target)
    assert first.logits.shape == (len(target), len(target.classes))
    assert torch.isfinite(first.logits).all()
    second = method.predict(copy.copy(target))
    assert torch.equal(first.logits, second.logits), f"{name}: two predictions differ"
    after = _tensors(method)
    assert fitted.keys() == after.keys()
    assert all(torch.equal(fitted[k], after[k]) for k in fitted), f"{name} changed its state"
