import json
import subprocess
import sys


def test_quick_demo_prints_the_comparison_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spikegrad.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("\n\n")[-1]
    assert "method" in table and "firing rate" in table
    summaries = json.loads((tmp_path / "demo.json").read_text())
    assert [s["method"] for s in summaries] == ["ann", "dspike-adaptive", "dspike-adaptive+evolutionary",
                                                "ltl-offline", "ltl-online"]
    for s in summaries:
        assert s["epochs"] == 2 and 0 <= s["final_test_acc"] <= 1
        assert f"{100 * s['final_test_acc']:7.2f}%" in table
    assert (tmp_path / "dspike" / "summary.json").exists()
    assert (tmp_path / "ann" / "summary.json").exists()
    for row in ("ltl-offline", "ltl-online"):
        stored = json.loads((tmp_path / row / "summary.json").read_text())
        assert stored["method"] == row
        assert not (tmp_path / row / "teacher").exists()  # the ann row is the teacher
    assert (tmp_path / "evolutionary" / "gradients.jsonl").exists()
