"""Small command-line behaviours that need no training: --version, --debug anywhere, eval's device and
batch, and the gettext .mo reader's charset and its errors."""

import importlib.metadata
import json
import struct

import pytest
import torch

import bigbatch
from bigbatch.cli import build_parser, main
from bigbatch.config import load_config
from bigbatch.data import builtin
from bigbatch.data.builtin import read_mo
from bigbatch.errors import UserError

from helpers import TINY, run_cli

# --------------------------------------------------------------------------- --version, --debug


def test_version_prints_the_installed_version(capsys):
    assert bigbatch.__version__ == importlib.metadata.version("bigbatch")
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"bigbatch {bigbatch.__version__}"


@pytest.mark.parametrize("argv", [["--debug", "train"], ["train", "--debug"], ["--debug", "plot", "x"],
                                  ["plot", "x", "--debug"], ["plot", "--debug", "x"]])
def test_debug_before_or_after_the_subcommand(argv):
    assert build_parser().parse_args(argv).debug is True


def test_no_debug_is_one_line_debug_is_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no-run")
    assert main(["plot", missing]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bigbatch: error: {missing}: no such directory; "
                                                            "expected a run directory (bigbatch train --run-dir)"]
    for argv in (["--debug", "plot", missing], ["plot", missing, "--debug"]):
        with pytest.raises(UserError, match="no such directory"):
            main(argv)


def test_debug_after_train_shows_the_traceback(tmp_path):
    proc = run_cli("train", "--debug", "--set", "train.max_step=3", "--run-dir", tmp_path / "r", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "did you mean 'train.max_steps'" in proc.stderr


# --------------------------------------------------------------------------- eval: the run's device and batch


class _Stop(Exception):
    pass


@pytest.fixture
def eval_spy(monkeypatch, tmp_path):
    """evaluate_run on a fake run whose config the test sets: records the device name it resolves and the
    micro-batch it opens the data with, then stops (no model, no data)."""
    from bigbatch.data import pipeline
    from bigbatch.train import checkpoint, setup

    seen, run = {}, {}

    def resolve_device(name):
        seen["device"] = name
        return torch.device("cpu")

    def build_data(cfg, micro, *args, **kw):
        seen["micro"] = micro
        raise _Stop

    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda path, which="best": tmp_path / "step_00000001")
    monkeypatch.setattr(bigbatch, "load", lambda ckpt, *a, **kw: (torch.nn.Linear(2, 2), run["cfg"]))
    monkeypatch.setattr(setup, "resolve_device", resolve_device)
    monkeypatch.setattr(pipeline, "build_data", build_data)
    return seen, run


@pytest.mark.parametrize("sets, device, expected", [
    (["train.micro_batch_size=4"], None, {"device": "auto", "micro": 4}),
    (["train.device=cpu"], None, {"device": "cpu", "micro": 8}),  # micro unset: the whole global batch of 8
    (["train.device=cuda"], "cpu", {"device": "cpu", "micro": 8}),  # --device wins over the run's
    (["task=translate", "train.global_batch_size=null", "train.micro_batch_tokens=512",
      "train.global_batch_tokens=1024"], None, {"device": "auto", "micro": 512}),  # a token budget
])
def test_eval_uses_the_runs_device_and_micro_batch(eval_spy, sets, device, expected):
    from bigbatch.evaluate.run import evaluate_run

    seen, run = eval_spy
    run["cfg"] = load_config(TINY, sets)
    with pytest.raises(_Stop):
        evaluate_run("run", device=device, baseline=False)
    assert seen == expected


def test_eval_device_flag_reaches_evaluate_run(monkeypatch, capsys):
    from bigbatch.evaluate import run

    calls = []
    monkeypatch.setattr(run, "evaluate_run", lambda *a, **kw: calls.append(kw) or {"loss": 1.0})
    assert main(["eval", "r", "--json", "--device", "cpu"]) == 0
    assert main(["eval", "r", "--json"]) == 0
    assert [kw["device"] for kw in calls] == ["cpu", None]  # None: the run's train.device
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {"loss": 1.0}


# --------------------------------------------------------------------------- gettext .mo catalogs


def write_mo(path, pairs, charset="UTF-8", order="<", encoding=None, translator="Jörg Bächle"):
    """A GNU .mo file of ``pairs`` in ``encoding`` (default ``charset``; byte order ``order``), with a header
    entry declaring ``charset`` (its Last-Translator line is not ASCII either, as in real latin-1 catalogs)."""
    encoding = encoding or charset
    header = (f"Project-Id-Version: x 1.0\nLast-Translator: {translator}\nMIME-Version: 1.0\n"
              f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: 8bit\n")
    entries = sorted([(b"", header.encode(encoding))] + [(k.encode(encoding), v.encode(encoding)) for k, v in pairs])
    n, ids, strs, table_o, table_t = len(entries), b"", b"", b"", b""
    start = 28 + 16 * n
    for msgid, _ in entries:
        table_o += struct.pack(order + "2I", len(msgid), start + len(ids))
        ids += msgid + b"\0"
    for _, msgstr in entries:
        table_t += struct.pack(order + "2I", len(msgstr), start + len(ids) + len(strs))
        strs += msgstr + b"\0"
    path.write_bytes(struct.pack(order + "7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0) + table_o + table_t + ids + strs)
    return path


PAIRS = [("Open file", "Datei öffnen"), ("Close", "Schließen"), ("ctx\x04Size", "Größe"),
         ("%d file\x00%d files", "%d Datei\x00%d Dateien")]
DECODED = [("%d file", "%d Datei"), ("Close", "Schließen"), ("Open file", "Datei öffnen"), ("Size", "Größe")]


@pytest.mark.parametrize("charset, order", [("ISO-8859-1", "<"), ("iso-8859-15", ">"), ("UTF-8", "<")])
def test_read_mo_decodes_the_declared_charset(tmp_path, charset, order):
    mo = write_mo(tmp_path / "x.mo", PAIRS, charset, order)
    assert sorted(read_mo(mo)) == DECODED


def test_read_mo_reads_a_utf8_catalog_labelled_latin1_as_utf8(tmp_path):
    mo = write_mo(tmp_path / "x.mo", PAIRS, "ISO-8859-1", encoding="UTF-8")  # as Debian's nn/gettext-tools.mo
    assert sorted(read_mo(mo)) == DECODED


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[: len(b) - 20], "truncated"),
    (lambda b: b[:20], "truncated"),
    (lambda b: b"\0\0\0\0" + b[4:], "not a GNU .mo catalog"),
    (lambda b: b.replace(b"charset=ISO-8859-1", b"charset=NO-SUCH-12"), "charset"),
])
def test_a_broken_mo_is_one_line_naming_the_file(tmp_path, damage, why):
    good = write_mo(tmp_path / "good.mo", PAIRS, "ISO-8859-1")
    bad = tmp_path / "bad.mo"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(UserError) as error:
        list(read_mo(bad))
    message = str(error.value)
    assert str(bad) in message and why in message and "\n" not in message


def test_prepare_reports_a_truncated_catalog_with_exit_2(tmp_path, monkeypatch, capsys):
    locale = tmp_path / "locale"
    (locale / "de" / "LC_MESSAGES").mkdir(parents=True)
    mo = write_mo(locale / "de" / "LC_MESSAGES" / "x.mo", PAIRS, "ISO-8859-1")
    mo.write_bytes(mo.read_bytes()[:-30])
    monkeypatch.setattr(builtin, "LOCALE_DIR", locale)
    code = main(["prepare", "--source", "builtin:gettext:de", "--task", "translate", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "bigbatch: error: " in line]  # progress bars aside
    assert code == 2 and len(errors) == 1 and f"{mo}: truncated .mo catalog" in errors[0], err
    assert "Traceback" not in err
