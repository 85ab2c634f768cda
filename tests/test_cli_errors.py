"""Bad input: one clear line on stderr, exit status 2, and nothing written."""

import pytest
from conftest import tiny_args

CASES = [
    (["--methods", "supervisd"], "Did you mean 'supervised'"),
    (["--methods", "supervised", "--dataset", "synthetik"], "unknown dataset 'synthetik'"),
    (["--methods", "supervised", "--sources", "S4"], "unknown source 'S4'"),
    (["--methods", "supervised", "--targets", "S3,S99"], "unknown source 'S99'"),
    (["--methods", "supervised", "--evaluators", "acuracy"], "unknown evaluator 'acuracy'"),
    (["--methods", ""], "no methods given"),
    (["--methods", "supervised", "--seeds", "a,b"], "bad --seeds"),
    (["--methods", "supervised", "--seeds", "-1"], "non-negative"),
    (["--methods", "supervised", "--preset", "huge"], "huge"),
    (["--methods", "supervised", "--set", "supervised.epoch=3"], "unknown setting"),
    (["--methods", "supervised,supervised"], "more than once"),
    (["--methods", "supervised", "--pretrained", "/nonexistent/w.pt"], "not found"),
]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_run_options_exit_2_with_one_line(cli, tmp_path, args, message):
    out = tmp_path / "run"
    result = cli("run", *args, "--out", str(out), *tiny_args())
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("run", "--methods", "supervised", "--sources", "S3", "--targets", "S3",
                 "--out", str(blocker / "run"), *tiny_args())
    assert result.returncode == 2
    assert "cannot write to output folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_of_a_missing_run(cli, tmp_path):
    result = cli("report", str(tmp_path / "nothing"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
