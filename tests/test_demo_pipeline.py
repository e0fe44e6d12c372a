"""The main job (`egmf-demo`, what `make demo` runs) end to end at a reduced size, with the tiny presets."""
import json

from typer.testing import CliRunner

from egmf.pipeline.demo import demo_app

runner = CliRunner()


def test_demo_runs_end_to_end_with_the_ablation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(demo_app, ["--clips", "21", "--epochs", "1", "--model", "tiny", "--encoders", "tiny",
                                 "--ablation"])
    assert r.exit_code == 0, r.output
    assert "[1/3]" in r.output and "[3/3]" in r.output and "Weighted_F1" in r.output
    table = (tmp_path / "runs/demo/ablation.md").read_text().splitlines()
    assert table[0] == "| modalities | test accuracy | test weighted F1 |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["all", "audio", "visual", "text"]
    for name in ("all", "audio", "visual", "text"):
        metrics = json.loads((tmp_path / f"runs/demo/{name}/metrics-test.json").read_text())["metrics"]
        assert metrics["N"] == 7 and metrics["parse_failure_rate"] == 0  # one test clip per emotion
    assert json.loads((tmp_path / "runs/demo/audio/config.json").read_text())["modalities"] == ["audio"]
    assert (tmp_path / "runs/demo/all/plots/confusion-demo-emotion-test.png").exists()
    assert (tmp_path / "cache/demo-21-tiny").is_dir() and (tmp_path / "data/demo/labels.csv").exists()
