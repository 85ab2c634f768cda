"""Which epoch a DINO stage keeps: step 1's by k-NN accuracy on the source's validation plates
(dino.select=knn), step 3's by the spread of its predictions on the target (adapt.keep=spread)."""

import torch
from conftest import tiny_args
from test_dual import TINY_DUAL, _domain, _tiny_config

from hcibench.run.stages import Context, StageCache
from hcibench_plugins.methods.dual import selection
from hcibench_plugins.methods.dual import steps as dual


def test_knn_accuracy_finds_clusters_and_ignores_unlabelled_samples():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=1)
    labels = torch.arange(3).repeat_interleave(10)
    noise = 0.05 * torch.randn(30, 16, generator=generator)
    points = torch.nn.functional.normalize(centres[labels] + noise, dim=1)
    assert selection.knn_accuracy(points, labels, points, labels, 3, k=5) == 1.0
    unlabelled = labels.clone()
    unlabelled[:10] = -1  # class 0 unknown on both sides: its queries are not scored
    assert selection.knn_accuracy(points, unlabelled, points, unlabelled, 3, k=5) == 1.0
    shuffled = labels[torch.randperm(30, generator=torch.Generator().manual_seed(1))]
    assert selection.knn_accuracy(points, shuffled, points, labels, 3, k=5) < 0.7


def test_the_best_epoch_is_kept_and_survives_a_resume(monkeypatch):
    scores = iter([0.2, 0.5, 0.4, 0.5])
    monkeypatch.setattr(selection, "knn_accuracy", lambda *a, **k: next(scores))
    monkeypatch.setattr(selection, "embeddings", lambda *a, **k: None)
    teacher = torch.nn.Linear(2, 2)
    domain = _domain("S", 1, n=8)
    chosen = selection.KnnSelection({"teacher": teacher}, domain, domain, 8, 32)
    weights = []
    for epoch in (1, 2):
        torch.nn.init.normal_(teacher.weight)
        weights.append(teacher.weight.detach().clone())
        chosen.record(epoch)
    resumed = selection.KnnSelection({"teacher": teacher}, domain, domain, 8, 32)
    resumed.load_state_dict(chosen.state_dict())
    for epoch in (3, 4):  # 0.4, then 0.5 again: an equal score does not replace the first
        torch.nn.init.normal_(teacher.weight)
        resumed.record(epoch)
    resumed.keep_best()
    assert torch.equal(teacher.weight, weights[1])
    assert resumed.result() == {"knn_accuracy": [0.2, 0.5, 0.4, 0.5], "selected_epoch": 2}


def test_step_one_with_knn_selection_records_its_curve_and_changes_only_its_own_stage():
    config = _tiny_config()
    config["dino"]["epochs"] = 3
    train, val = _domain("S", 2, seed=0), _domain("S", 2, n=24, seed=1)
    last = Context(config, seed=0, source="S", stages=StageCache(None, keep_in_memory=10))
    _, last_key = dual.pretrain_fe(last, train, False, val)
    knn_config = {**config, "dino": {**config["dino"], "select": "knn"}}
    knn = Context(knn_config, seed=0, source="S", stages=StageCache(None, keep_in_memory=10))
    result, knn_key = dual.pretrain_fe(knn, train, False, val)
    assert "select" not in last_key and knn_key == {**last_key, "select": "knn"}
    curve = result["stats"]["knn_accuracy"]
    assert len(curve) == 3 and all(0.0 <= s <= 1.0 for s in curve)
    assert result["stats"]["selected_epoch"] == 1 + curve.index(max(curve))


def test_knn_selection_without_validation_plates_is_one_clear_line(cli, tmp_path):
    done = cli(
        "run",
        "--methods",
        "dual-dino",
        "--sources",
        "S8",
        "--targets",
        "S8",
        "--out",
        str(tmp_path / "run"),
        *tiny_args(*TINY_DUAL, "dino.select=knn", "split.val_plates=0", supervised=False),
    )
    assert done.returncode == 2, done.stderr
    assert "dino.select=knn" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "records").exists()


def test_the_spread_rule_keeps_the_last_epoch_within_the_tolerance_and_survives_a_resume():
    fe = torch.nn.Linear(2, 2)
    monitor = type("Monitor", (), {"rows": []})()
    keeper = selection.SpreadSelection({"teacher": fe}, monitor, tolerance=0.05)
    weights = {}
    for epoch, spread in enumerate([0.80, 0.79, 0.76, 0.74, 0.75, 0.70]):
        with torch.no_grad():
            fe.weight.fill_(epoch)
        weights[epoch] = fe.weight.detach().clone()
        monitor.rows.append({"predicted_classes": spread})
        keeper.record(epoch)
        if epoch == 3:  # a resume from here keeps what an uninterrupted run keeps
            resumed = selection.SpreadSelection({"teacher": fe}, monitor, tolerance=0.05)
            resumed.load_state_dict(keeper.state_dict())
            keeper = resumed
    keeper.keep_best()
    assert keeper.result() == {"kept_epoch": 4}  # 0.75 is within 0.05 of 0.80; 0.70 is not
    assert torch.equal(fe.weight, weights[4])


def test_the_drift_rule_keeps_the_last_epoch_whose_tokens_stay_close_to_step_1s():
    fe = torch.nn.Linear(2, 2)
    monitor = type("Monitor", (), {"rows": []})()
    keeper = selection.KEEP_RULES["drift"]({"teacher": fe}, monitor, tolerance=0.05)
    for epoch, cka in enumerate([1.0, 0.99, 0.93, 0.96, 0.90]):
        with torch.no_grad():
            fe.weight.fill_(epoch)
        monitor.rows.append({"cka_to_start": cka, "predicted_classes": 0.5})
        keeper.record(epoch)
    keeper.keep_best()
    assert keeper.result() == {"kept_epoch": 3}  # 0.96 is within 0.05 of 1; 0.90 is not
    assert torch.all(fe.weight == 3)
