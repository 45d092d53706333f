"""Every command checks its paths up front, the same way (lenshpc/paths.py): a name over
the file system's limit, a file where a folder is expected and a folder where a file is
expected are each one line on stderr and exit 2, never a traceback, and nothing is made.

Run through the installed ``lenshpc`` command, as a user would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lenshpc.config import UserError
from lenshpc.paths import check_input_file, check_output_dir, check_output_file
from tests.conftest import PYTHON, ROOT, env

LENSHPC = str(Path(PYTHON).parent / "lenshpc")
CONFIG = str(ROOT / "configs" / "debug.yaml")
LONG = "n" * 300   # over NAME_MAX (255 bytes) on every file system lenshpc runs on

#: command -> argv with {long}, {file} (an existing file) and {dir} (an existing folder)
#: in the places of each case: an over-long name, a file for a folder, a folder for a file.
CASES = {
    "simulate": {
        "long": ["simulate", "--config", CONFIG, "--out", "{dir}/{long}"],
        "file for folder": ["simulate", "--config", CONFIG, "--out", "{file}"],
        "folder for file": ["simulate", "--config", "{dir}", "--out", "{dir}/out"],
    },
    "dataset info": {
        "long": ["dataset", "info", "{dir}/{long}"],
        "file for folder": ["dataset", "info", "{file}"],
    },
    "dataset verify": {
        "long": ["dataset", "verify", "{long}/x"],
        "file for folder": ["dataset", "verify", "{file}"],
    },
    "train": {
        "long": ["train", "--config", CONFIG, "--data", "{dir}", "--out", "{dir}/{long}",
                 "--job", "0"],
        "file for folder": ["train", "--config", CONFIG, "--data", "{file}", "--out", "{dir}/r",
                            "--job", "0"],
        "below a file": ["train", "--config", CONFIG, "--data", "{dir}", "--out", "{file}/runs",
                         "--job", "0"],
        "folder for file": ["train", "--config", "{dir}", "--list-jobs"],
    },
    "evaluate": {
        "long": ["evaluate", "--config", CONFIG, "--data", "{dir}", "--runs", "{dir}/{long}",
                 "--out", "{dir}/report"],
        "file for folder": ["evaluate", "--config", CONFIG, "--data", "{dir}", "--runs", "{dir}",
                            "--out", "{file}"],
        "folder for file": ["evaluate", "--config", "{dir}", "--data", "{dir}", "--runs", "{dir}",
                            "--out", "{dir}/report"],
    },
    "run": {
        "long": ["run", "--config", CONFIG, "--workdir", "{dir}/{long}/w"],
        "file for folder": ["run", "--config", CONFIG, "--workdir", "{file}"],
        "folder for file": ["run", "--config", "{dir}", "--workdir", "{dir}/w"],
    },
    "slurm render": {
        "long": ["slurm", "render", "--config", CONFIG, "--out", "{dir}/{long}"],
        "file for folder": ["slurm", "render", "--config", CONFIG, "--out", "{dir}/s",
                            "--workdir", "{file}"],
        "folder for file": ["slurm", "render", "--config", "{dir}", "--out", "{dir}/s"],
    },
    "slurm submit": {
        "long": ["slurm", "submit", "--config", CONFIG, "--workdir", "{long}", "--dry-run"],
        "file for folder": ["slurm", "submit", "--config", CONFIG, "--workdir", "{file}",
                            "--dry-run"],
        "folder for file": ["slurm", "submit", "--config", "{dir}", "--workdir", "{dir}/w",
                            "--dry-run"],
    },
    "config check": {
        "long": ["config", "check", "{dir}/{long}.yaml"],
        "folder for file": ["config", "check", "{dir}"],
    },
    "predict": {
        "long": ["predict", "{file}", "--config", CONFIG, "--runs", "{dir}",
                 "--out", "{dir}/{long}.fits"],
        "file for folder": ["predict", "{file}", "--config", CONFIG, "--runs", "{file}",
                            "--out", "{dir}/c.fits"],
        "folder for file": ["predict", "{file}", "--config", CONFIG, "--runs", "{dir}",
                            "--out", "{dir}"],
    },
}
EXPECTED = {"long": "over the file system's limit of", "file for folder": "a file, not a folder",
            "below a file": "is a file, not a folder", "folder for file": "a folder"}


@pytest.mark.parametrize("command,case", [(c, k) for c, cases in CASES.items() for k in cases])
def test_a_bad_path_is_one_line_and_exit_2(tmp_path, command, case):
    folder = tmp_path / "in"
    folder.mkdir()
    afile = tmp_path / "a-file.yaml"
    afile.write_text("name: x\n")
    argv = [a.format(long=LONG, file=afile, dir=folder) for a in CASES[command][case]]
    before = sorted(tmp_path.rglob("*"))
    proc = subprocess.run([LENSHPC, *argv], capture_output=True, text=True, env=env(),
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"lenshpc {command.split()[0]}: error: "), lines[0]
    assert EXPECTED[case] in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(tmp_path.rglob("*")) == before, "a refused command made files"


def test_the_helpers_for_other_commands(tmp_path):
    """What predict (and any new command) calls for its own inputs and outputs."""
    (tmp_path / "f.fits").write_bytes(b"x")
    assert check_input_file(tmp_path / "f.fits", "INPUT") == tmp_path / "f.fits"
    for call, arg, text in [(check_input_file, tmp_path, "a folder, not a file"),
                            (check_input_file, tmp_path / "none.fits", "not found"),
                            (check_input_file, tmp_path / "f.fits" / "x", "is a file"),
                            (check_output_file, tmp_path, "a folder"),
                            (check_output_file, tmp_path / LONG, "limit of"),
                            (check_output_dir, tmp_path / "f.fits", "a file, not a folder")]:
        with pytest.raises(UserError, match=text):
            call(arg, "--x")
    with pytest.raises(UserError, match="needs about"):
        check_output_dir(tmp_path / "out", "--out", need_bytes=1 << 62)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,text", [
    ("", "has no keys"), ("- a\n- b\n", "not a mapping"),
    ("name: x\n" + "# padding\n" * 120_000, "over the limit"), (None, "a folder, not a file")])
def test_a_config_that_is_not_a_config_is_one_line(tmp_path, content, text):
    """lenshpc.config.load (and the path check before it) refuse an empty file, a list, a
    file over 1 MiB and a folder, in one line."""
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    proc = subprocess.run([LENSHPC, "config", "check", str(path)], capture_output=True,
                          text=True, env=env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
