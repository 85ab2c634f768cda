"""Bad input: one clear line on stderr, exit status 2, and nothing written."""

from pathlib import Path

import pytest
from conftest import run_in_process, tiny_args

# The quick preset's pretrained FE: made for the quick backbone, not for the tiny one of the tests.
SHIPPED_FE = Path(__file__).parents[1] / "plugins/datasets/data/synthetic-labs/fe-quick.pt"

CASES = [
    (["--methods", "supervisd"], "Did you mean 'supervised'"),
    (["--methods", "supervised", "--dataset", "synthetik"], "unknown dataset 'synthetik'"),
    (["--methods", "supervised", "--sources", "S4"], "unknown source 'S4'"),
    (["--methods", "supervised", "--targets", "S3,S99"], "unknown source 'S99'"),
    (["--methods", "supervised", "--evaluators", "acuracy"], "unknown evaluator 'acuracy'"),
    (["--methods", ""], "no methods given"),
    (["--methods", "supervised", "--seeds", "a,b"], "bad --seeds"),
    (["--methods", "supervised", "--seeds", "-1"], "seeds must be integers from 0"),
    (["--methods", "supervised", "--preset", "huge"], "huge"),
    (["--methods", "supervised", "--set", "supervised.epoch=3"], "unknown setting"),
    (["--methods", "supervised,supervised"], "more than once"),
    (["--methods", "supervised", "--pretrained", "/nonexistent/w.pt"], "not found"),
    (["--methods", "supervised", "--seeds", "18446744073709551616"], "seeds must be integers"),
    (["--methods", "supervised,coda", "--pretrained", str(SHIPPED_FE)], "fits backbone"),
    (
        ["--methods", "supervised,oda", "--set", "adapt.keep=spread", "--set", "adapt.monitor=false"],
        "adapt.keep=spread needs adapt.monitor=true",
    ),
    *[
        (["--methods", "supervised,oda", "--set", item], message)
        for item, message in [
            ("supervised.epochs=abc", "supervised.epochs='abc': expected an integer"),
            ("supervised.epochs=-1", "expected an integer from 1"),
            ("supervised.epochs=0", "expected an integer from 1"),
            ("supervised.epochs=1e9", "expected an integer"),
            ("supervised.epochs=null", "supervised.epochs=null"),
            ("supervised.lr=abc", "supervised.lr='abc': expected a number"),
            ("supervised.lr=0", "above 0"),
            ("supervised.batch_size=0", "supervised.batch_size=0"),
            ("threads=-1", "threads=-1"),
            ("threads=1.5", "threads=1.5"),
            ("backbone.embed_dim=33", "multiple of backbone.num_heads"),
            ("task.model=5", "task.model is a section"),
            ("task.model.num_heads=3", "task.model.embed_dim=128: it must be a multiple"),
            ("dino.epochs=abc", "dino.epochs='abc'"),
            ("dino.momentum_teacher=1.5", "from 0 to 1"),
            ("dino.global_size=64", "larger than input_size"),
            ("dino.local_size=30", "local crops must not be larger"),
            ("dino.head_batch_norm=1", "true or false"),
            ("adapt.trainable=late", "one of all, early, norm"),
            ("adapt.clip_mode=both", "one of global, parameter"),
            ("dino.lr_warmup=linear", "one of zero, first-step"),
            ("adapt.keep=best", "one of last, spread, drift"),
            ("dino.momentum_ahead=1", "true or false"),
            ("adapt.lr=-1", "adapt.lr=-1"),
            ("adapt.monitor=yes", "true or false"),
            ("adapt.cross_batch=2", "true or false"),
            ("backbone.model=5", "a name"),
        ]
    ],
]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_run_options_exit_2_with_one_line(capsys, tmp_path, args, message):
    out = tmp_path / "run"
    status, _, err = run_in_process(capsys, "run", *tiny_args(), *args, "--out", str(out))
    assert status == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli(
        "run",
        "--methods",
        "supervised",
        "--sources",
        "S3",
        "--targets",
        "S3",
        "--out",
        str(blocker / "run"),
        *tiny_args(),
    )
    assert result.returncode == 2
    assert "cannot write to output folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_of_a_missing_run(cli, tmp_path):
    result = cli("report", str(tmp_path / "nothing"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_settings_shows_each_value_with_its_origin_and_range(cli):
    result = cli("settings", "--methods", "coda,supervised", "--set", "adapt.lr=1e-4")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "--set" in lines["adapt.lr"] and "above 0" in lines["adapt.lr"]
    assert "method supervised" in lines["supervised.epochs"]
    assert "dataset synthetic" in lines["dataset.culture"]
    assert "one of all, early, norm" in lines["adapt.trainable"]
    bad = cli("settings", "--methods", "coda", "--set", "dino.epochs=abc")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
