import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_dataset_example_learns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "custom_dataset.py"), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    accuracy = float(last.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 90.0
    assert (tmp_path / "runs" / "custom_dataset" / "summary.json").exists()
