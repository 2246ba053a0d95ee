"""docs/api.md is generated from the docstrings and must be current."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "tools" / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_api_md_is_current():
    tool = load_tool()
    text = tool.render()
    current = (ROOT / "docs" / "api.md").read_text()
    assert current == text, ("docs/api.md is stale: run `PYTHONPATH=src python tools/api_reference.py` "
                             "and commit docs/api.md")


def test_reference_lists_signatures_and_first_paragraphs(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    text = tool.render()
    assert "## `spikegrad.encoders`" in text and "## `spikegrad.models._registry`" not in text
    # annotations as written (no quotes), string defaults quoted, no "-> None" on a class
    assert ("- class `LatencyEncoder(T: int, *, scale: str = 'linear', threshold: float = 0.0, "
            "min_intensity: float = 0.01)`: ") in text
    assert "- `create(name: str | Mapping[str, Any], T: int, **kwargs) -> nn.Module`: The encoder" in text
    assert not re.search(r"\w: '[\w.| \[\],]+'[,)=]", text)
    assert "Time-to-first-spike coding: every input spikes once, brighter inputs earlier." in text
    assert "  - classmethod `from_snntorch(beta: float | nn.Module," in text  # methods, without cls
    # the index: one line per package, every module's section linked from it
    index = text.split("\n## ")[0]
    assert "- [`spikegrad.methods`](#spikegradmethods): [`dspike`](#spikegradmethodsdspike)," in index
    sections = re.findall(r"^## `([\w.]+)`", text, re.M)
    assert sorted(re.findall(r"\]\(#(\w+)\)", index)) == sorted(s.replace(".", "") for s in sections)
    assert not re.search(r"0x[0-9a-f]{6,}", text)  # no memory addresses: the same on every run
    assert str(ROOT) not in text  # no path of this checkout (a clone elsewhere renders the same)
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    monkeypatch.setattr(tool, "TARGET", stale)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    assert tool.main(["--check"]) == 1 and "stale" in capsys.readouterr().err
    assert tool.main([]) == 0 and tool.main(["--check"]) == 0
