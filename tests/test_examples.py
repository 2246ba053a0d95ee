import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_dataset_example_learns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "custom_dataset.py"), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    accuracy = float(last.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 90.0
    assert (tmp_path / "runs" / "custom_dataset" / "summary.json").exists()


@pytest.mark.slow
def test_custom_model_example_trains_both_methods_reproducibly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "custom_model_methods.py"), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("dspike-adaptive+evolutionary: test accuracy ")
    assert float(last.split("test accuracy ")[1].split("%")[0]) > 80.0
    assert "T = 4" in last and "the two seeded runs are identical" in last


def test_the_readme_python_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (EXAMPLES.parent / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "__main__"})
    method, accuracy = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert method == "dspike-adaptive" and float(accuracy) > 0.75
    assert (tmp_path / "runs" / "mine" / "summary.json").is_file()
