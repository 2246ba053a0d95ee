"""The commands on a checkpoint (eval, calibrate, fdg) refuse every --set key and flag they do not
read, with the key and the way out; train refuses --allow-config-change without resuming."""

import contextlib
import io
import json

import pytest

import spikegrad.evaluation
from spikegrad import cli, models
from spikegrad.alignment_report import analyse_checkpoint
from spikegrad.checkpoint import save_checkpoint
from spikegrad.config import Config, refuse_unread_overrides
from spikegrad.demo import recipe_path
from spikegrad.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny digits model (8×8 inputs, T = 2) with the default config."""
    model_args = {"name": "digits_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "T": 2,
                                                   "width": 0.25, "input_size": 8}}
    path = tmp_path_factory.mktemp("ck") / "ck.pt"
    save_checkpoint(path, models.create(model_args["name"], **model_args["kwargs"]), model_args,
                    config=Config().to_dict())
    return path


def run_cli(argv) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def refused(argv, *needles: str) -> str:
    status, _, err = run_cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("spikegrad: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------- the helper


def test_refuse_unread_matches_keys_and_sections_and_picks_the_most_specific_hint():
    reads = ["data.root", "train"]
    refuse_unread_overrides(["data.root=/x", "train.epochs=2", "train=null"], reads, "cmd")  # all read
    with pytest.raises(UserError, match=r"^--set data\.rootx: cmd does not read it \(it reads"):
        refuse_unread_overrides(["data.rootx=1"], reads, "cmd")  # a prefix of the name is not its section
    with pytest.raises(UserError, match=r"--set data: cmd does not read it"):
        refuse_unread_overrides(["data={root: x}"], reads, "cmd")  # the whole section holds unread keys
    instead = {"model": "general", "model.T": "specific"}
    with pytest.raises(UserError, match=r"--set model\.T: cmd does not read it; specific \("):
        refuse_unread_overrides(["model.T=8"], reads, "cmd", instead)
    with pytest.raises(UserError, match=r"--set model\.width: cmd does not read it; general \("):
        refuse_unread_overrides(["model.width=2"], reads, "cmd", instead)


# --------------------------------------------------------------------------- eval


@pytest.mark.parametrize("setting, hint", [
    ("model.T=8", "the model is the checkpoint's"),
    ("model.neuron.threshold=0.5", "the model is the checkpoint's"),
    ("data.batch_size=8", "data.eval_batch_size"),
    ("data.augment=[hflip]", "does not augment"),
    ("analysis.monitors=false", "give --analysis"),
    ("train.epochs=3", "(it reads"),
    ("dspike.epsilon=0.5", "(it reads"),
])
def test_eval_refuses_what_it_does_not_read(checkpoint, setting, hint):
    key = setting.split("=")[0]
    refused(["eval", checkpoint, "--set", setting], f"--set {key}: spikegrad eval does not read it", hint)


def test_eval_honours_amp_workers_and_its_other_keys(checkpoint, monkeypatch):
    seen = {}

    def fake(model, loader, device, amp_dtype=None, analysis=None, readout_start=0, **_):
        seen.update(workers=loader.num_workers, batch=loader.batch_size, amp=amp_dtype,
                    analysis=analysis, readout=readout_start)
        return {"test_acc": 0.5, "test_loss": 1.0, "firing_rate": None}

    monkeypatch.setattr(spikegrad.evaluation, "evaluate_model", fake)
    status, out, err = run_cli(["eval", checkpoint, "--json", "--device", "cpu", "--set", "train.amp=true",
                                "--set", "data.num_workers=1", "--set", "data.eval_batch_size=7",
                                "--set", "ltl.mode=online", "--set", "ltl.T_warm=1"])
    assert status == 0, err
    assert seen == {"workers": 1, "batch": 7, "amp": spikegrad.evaluation.torch.bfloat16, "analysis": None,
                    "readout": 1}
    assert json.loads(out)["test_acc"] == 0.5
    status, _, err = run_cli(["eval", checkpoint, "--json", "--analysis", "--set", "analysis.membrane=true"])
    assert status == 0, err
    assert seen["analysis"].membrane and seen["amp"] is None and seen["workers"] == 0  # stored: off, 0


# --------------------------------------------------------------------------- calibrate


@pytest.mark.parametrize("argv, needles", [
    (["--method", "bptt", "--teacher", "t.pt"], ["--teacher", "--method bptt does not use it"]),
    (["--method", "none", "--teacher", "t.pt"], ["--teacher", "--method none does not use it"]),
    (["--method", "none", "--steps", "5"], ["--steps: --method none"]),
    (["--method", "none", "--lr", "0.1"], ["--lr: --method none makes no update"]),
    (["--method", "bptt", "--steps", "0", "--lr", "0.1"], ["--lr: --steps 0 makes no update"]),
    (["--method", "bptt", "--set", "train.epochs=3"], ["--set train.epochs", "--steps"]),
    (["--method", "bptt", "--set", "schedule.name=step"], ["--set schedule.name", "constant"]),
    (["--method", "bptt", "--set", "optim.weight_decay=0.1"],
     ["--set optim.weight_decay", "no weight decay"]),
    (["--method", "bptt", "--set", "dspike.adaptive=true"], ["--set dspike.adaptive", "surrogate"]),
    (["--method", "bptt", "--set", "shortcut.enabled=true"], ["--set shortcut.enabled", "shortcut"]),
    (["--method", "bptt", "--set", "ltl.mode=online"], ["--set ltl.mode", "--method"]),
    (["--method", "bptt", "--set", "ltl.student_init=teacher"], ["--set ltl.student_init"]),
    (["--method", "bptt", "--set", "diagnostics.gradient_interval=5"],
     ["--set diagnostics.gradient_interval"]),
    (["--method", "bptt", "--set", "train.progress=true"], ["--set train.progress"]),
    (["--method", "bptt", "--set", "ltl.distill=0.5"], ["--set ltl.distill", "(it reads"]),  # bptt's loss
    (["--method", "bptt", "--lr", "0.1", "--set", "optim.lr=0.2"], ["--set optim.lr", "--lr sets it"]),
    (["--method", "none", "--set", "optim.lr=0.2"], ["--set optim.lr", "--method none makes no update"]),
    (["--method", "none", "--set", "data.batch_size=8"], ["--set data.batch_size", "--method none"]),
    (["--method", "bptt", "--set", "model.T=4"], ["--set model.T", "the model is the checkpoint's"]),
    (["--method", "ltl-online", "--set", "ltl.teacher_checkpoint=t.pt"], ["--set ltl.teacher_checkpoint",
                                                                          "give --teacher"]),
])
def test_calibrate_refuses_what_it_does_not_use(checkpoint, argv, needles):
    refused(["calibrate", checkpoint, *argv], *needles)


def test_calibrate_defaults_and_the_keys_it_reads_still_work(checkpoint):
    status, out, err = run_cli(["calibrate", checkpoint, "--method", "none", "--json", "--sigma", "0.1",
                                "--set", "data.eval_batch_size=100"])
    assert status == 0, err
    assert json.loads(out)["steps"] == 0
    status, out, err = run_cli(["calibrate", checkpoint, "--method", "bptt", "--steps", "2", "--json",
                                "--lr", "0.01", "--set", "data.batch_size=8", "--set", "train.seed=1",
                                "--set", "optim.name=adam", "--set", "train.label_smoothing=0.1",
                                "--set", "train.device=cpu"])
    assert status == 0, err
    assert json.loads(out)["steps"] == 2


# --------------------------------------------------------------------------- fdg


@pytest.mark.parametrize("setting, hint", [
    ("dspike.epsilon=0.5", "give --epsilon"),
    ("dspike.bn_mode=eval", "give --bn-mode"),
    ("dspike.probe_batches=2", "fdg's own flags"),
    ("model.T=8", "the model is the checkpoint's"),
    ("data.batch_size=8", "give --batch-size"),
    ("train.epochs=3", "(it reads"),
])
def test_fdg_refuses_what_it_does_not_read(checkpoint, setting, hint):
    key = setting.split("=")[0]
    refused(["fdg", checkpoint, "--set", setting], f"--set {key}: the FDG analysis (spikegrad fdg) does "
            "not read it", hint)
    with pytest.raises(UserError, match=f"--set {key}"):  # the library function refuses it too
        analyse_checkpoint(checkpoint, overrides=[setting])


# --------------------------------------------------------------------------- train


def test_train_refuses_allow_config_change_without_resuming(tmp_path):
    refused(["train", recipe_path("digits"), "--out", tmp_path / "run", "--allow-config-change"],
            "--allow-config-change", "--resume")
    assert not (tmp_path / "run").exists()


def test_a_user_error_is_one_write_so_the_lines_of_ranks_do_not_interleave(monkeypatch, tmp_path):
    """Under torchrun every rank may print the same error at once; a message written apart from
    its newline ran into the next rank's on one line."""
    import sys

    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    monkeypatch.setattr(sys, "stderr", Recording())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    assert cli.main(["train", "nope.yaml"]) == 2
    (message,) = [w for w in writes if "error" in w]
    assert message.startswith("spikegrad: error (rank 1): ") and message.endswith("\n")
