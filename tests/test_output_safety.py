"""stimsim never loses a user's files: output rules, interruptions, concurrency, file-system faults.

Every test runs the real command line in a subprocess (``python -m stimsim.cli``) on the
embedded demo protocol, then looks at the folder: what is there, what is gone, the exit code
and the single ``error:`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stimsim.outputs import RESULTS_FORMAT, ResultsFolder, is_results_folder

CLI = [sys.executable, "-m", "stimsim.cli", "-q"]

# A CLI whose VTU writer (a worker thread of the write phase) writes part of its file, says
# so on stdout and waits until the test creates the file named by STIMSIM_TEST_GO: a signal
# or a second process can then arrive while the results are half written.
PAUSED_CLI = r"""
import os, sys, time
import stimsim.mesh as m
real = m.write_vtu
def paused(path, *a, **k):
    with open(path, "wb") as fh:
        fh.write(b"<partial")
    print("WRITING", flush=True)
    go = os.environ["STIMSIM_TEST_GO"]
    while not os.path.exists(go):
        time.sleep(0.02)
    return real(path, *a, **k)
m.write_vtu = paused
from stimsim.cli import main
sys.argv = ["stimsim", "-q"] + sys.argv[1:]
main()
"""


def run(args, cwd, env=None, **kw):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env, **kw)


def one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def start_paused(args, cwd, go: Path) -> subprocess.Popen:
    env = {**os.environ, "STIMSIM_TEST_GO": str(go)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_CLI] + [str(a) for a in args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the write phase has begun
    assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def user_files(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"thesis.docx": b"my thesis", "data.csv": b"1,2,3\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def assert_untouched(folder: Path, files: dict):
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert not [p for p in folder.iterdir() if p.name.startswith(".stimsim-")]


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory) -> Path:
    """One results folder written by `stimsim demo` (copied where a test needs to replace one)."""
    root = tmp_path_factory.mktemp("demo")
    proc = run(["demo", "--out", "res"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "res"


# ------------------------------------------------------------------------------ data loss


@pytest.mark.parametrize("args", [
    ["demo", "--out", "."],
    ["demo", "--out", ""],
    ["demo", "--out", "Documents"],
    ["run", "PROTO", "--out", ".", "--overwrite"],
    ["run", "PROTO", "--out", "", "--overwrite"],
    ["run", "PROTO", "--out", "Documents", "--overwrite"],
    ["run", "PROTO", "--out", "Documents/..", "--overwrite"],
])
def test_never_replaces_a_folder_stimsim_did_not_write(tmp_path, demo_result, args):
    home = tmp_path / "home"
    files = user_files(home)
    docs = user_files(home / "Documents")
    args = [str(demo_result / "protocol.yaml") if a == "PROTO" else a for a in args]
    proc = run(args, cwd=home)
    assert proc.returncode == 2
    one_error_line(proc)
    assert_untouched(home, files)
    assert_untouched(home / "Documents", docs)
    assert sorted(p.name for p in home.iterdir()) == ["Documents", "data.csv", "thesis.docx"]


def test_home_and_root_are_refused(tmp_path, demo_result):
    env = {**os.environ, "HOME": str(tmp_path)}
    for out in (str(tmp_path), "/", "~"):
        proc = run(["run", demo_result / "protocol.yaml", "--out", out, "--overwrite"], cwd=tmp_path / "..",
                   env=env)
        assert proc.returncode == 2, out
        assert "never writes into or replaces" in one_error_line(proc)


def test_demo_replaces_its_own_results_and_keeps_the_marker(tmp_path):
    first = run(["demo", "--out", "d"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["format"] == RESULTS_FORMAT
    stamp = (tmp_path / "d" / "summary.json").stat().st_mtime_ns
    time.sleep(0.01)
    again = run(["demo", "--out", "d"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "d" / "summary.json").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # a file of the user's inside a results folder makes it the user's: not replaced
    (tmp_path / "d" / "notes.txt").write_text("mine")
    proc = run(["demo", "--out", "d"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "not written by stimsim" in one_error_line(proc)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def test_existing_file_as_out_is_refused(tmp_path, demo_result):
    (tmp_path / "out").write_text("precious")
    proc = run(["run", demo_result / "protocol.yaml", "--out", "out", "--overwrite"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "existing file" in one_error_line(proc)
    assert (tmp_path / "out").read_text() == "precious"


# ------------------------------------------------------------------------------ interruptions


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_writing_leaves_nothing(tmp_path, demo_result, sig):
    go = tmp_path / "go"
    work = tmp_path / "work"
    work.mkdir()
    proc = start_paused(["run", demo_result / "protocol.yaml", "--out", "new/parent/res"], work, go)
    assert any(p.name.startswith(".stimsim-") for p in (work / "new" / "parent").iterdir())  # writing now
    proc.send_signal(sig)
    time.sleep(0.2)
    go.touch()  # let the writer thread return; the main thread is unwinding already
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert err.strip().startswith("error: interrupted") and len(err.strip().splitlines()) == 1, err
    assert list(work.iterdir()) == []  # no results, no temporary folder, no lock, no empty parents


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path, demo_result):
    go = tmp_path / "go"
    proc = start_paused(["run", demo_result / "protocol.yaml", "--out", "res"], tmp_path, go)
    proc.kill()  # SIGKILL: no clean-up possible
    proc.communicate(timeout=60)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".stimsim-")]
    assert left  # the killed run's temporary folder (and lock file)
    proc = run(["run", demo_result / "protocol.yaml", "--out", "res"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    assert is_results_folder(tmp_path / "res")


# ------------------------------------------------------------------------------ concurrency


def test_second_writer_to_the_same_folder_fails_cleanly(tmp_path, demo_result):
    go = tmp_path / "go"
    work = tmp_path / "work"
    work.mkdir()
    first = start_paused(["run", demo_result / "protocol.yaml", "--out", "res"], work, go)
    second = run(["run", demo_result / "protocol.yaml", "--out", "res"], cwd=work)
    go.touch()
    out, err = first.communicate(timeout=120)
    assert second.returncode == 2
    assert "another stimsim process" in one_error_line(second)
    assert first.returncode == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["res"]
    assert is_results_folder(work / "res")


def test_folder_appearing_during_the_run_is_not_replaced(tmp_path, demo_result):
    go = tmp_path / "go"
    proc = start_paused(["run", demo_result / "protocol.yaml", "--out", "res"], tmp_path, go)
    files = user_files(tmp_path / "res")  # someone else creates the folder meanwhile
    go.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.startswith("error: ") and "already exists" in err
    assert_untouched(tmp_path / "res", files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stimsim-")]


# ------------------------------------------------------------------------------ file-system faults


def test_unwritable_place_fails_before_the_work(tmp_path, demo_result):
    proc = run(["run", demo_result / "protocol.yaml", "--out", "/proc/stimsim-test/res"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot create" in one_error_line(proc)
    if os.geteuid() != 0:  # permission bits bind everyone but root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        proc = run(["run", demo_result / "protocol.yaml", "--out", ro / "res"], cwd=tmp_path)
        assert proc.returncode == 2
        one_error_line(proc)
        assert list(ro.iterdir()) == []


def test_file_size_limit_fails_before_writing(tmp_path, demo_result):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(CLI + ["run", str(demo_result / "protocol.yaml"), "--out", "res"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 2
    assert "ulimit -f" in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_long_name_is_refused_before_the_work(tmp_path, demo_result):
    proc = run(["run", demo_result / "protocol.yaml", "--out", "x" * 300], cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "300 characters" in line and len(line) < 300
    assert list(tmp_path.iterdir()) == []


def test_single_file_outputs_replace_only_stimsim_files(tmp_path, demo_result):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    (tmp_path / "schema.json").write_text("{}")
    proc = run(["schema", "--out", "schema.json"], cwd=tmp_path)
    assert proc.returncode == 2 and "not written by stimsim" in one_error_line(proc)
    assert (tmp_path / "schema.json").read_text() == "{}"
    ok = run(["schema", "--out", "s2.json"], cwd=tmp_path)
    again = run(["schema", "--out", "s2.json"], cwd=tmp_path)
    assert ok.returncode == 0 and again.returncode == 0, again.stderr
    assert "$defs" in json.loads((tmp_path / "s2.json").read_text())
    for args in (["view", demo_result, "--out", "fig.png"],
                 ["report", demo_result / "protocol.yaml", "--out", "."],
                 ["leadfield", "sphere", "--positions", "cap.tsv", "--reference", "A", "--out", "schema.json"]):
        proc = run(args, cwd=tmp_path)
        assert proc.returncode == 2, args
        one_error_line(proc)
    assert (tmp_path / "fig.png").read_bytes().endswith(b"not ours")


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("args, option", [
    (["optimize", "tms", "PROTO", "--target", "0,0,80", "--grid-step", "0"], "--grid-step"),
    (["optimize", "tms", "PROTO", "--target", "0,0,80", "--grid-radius", "-5"], "--grid-radius"),
    (["optimize", "tms", "PROTO", "--target", "0,0,80", "--grid-step", "1e-4"], "--grid-step"),
    (["optimize", "tms", "PROTO", "--target", "0,0,80", "--angles", "0"], "--angles"),
    (["batch", "PROTO", "--out", "b", "--jobs", "0"], "--jobs"),
    (["batch", "PROTO", "--out", "afile"], "--out"),
    (["leadfield", "sphere", "--positions", "cap.tsv", "--reference", "A", "--out", "lf.npz",
      "--diameter-mm", "-1"], "--diameter-mm"),
])
def test_bad_arguments_fail_before_the_work(tmp_path, demo_result, args, option):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "cap.tsv").write_text("A\t0\t0\t95\nB\t95\t0\t0\n")
    args = [str(demo_result / "protocol.yaml") if a == "PROTO" else a for a in args]
    proc = run(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert option in one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cap.tsv"]


# ------------------------------------------------------------------------------ batch


def test_batch_keys_results_on_content_and_resolves_paths_per_file(tmp_path, demo_result):
    from stimsim.simulation import resolve_head

    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "s.msh.gz").write_bytes(resolve_head("sphere").read_bytes())
    text = (demo_result / "protocol.yaml").read_text().replace("head: sphere", "head: ../heads/s.msh.gz")
    assert "../heads/s.msh.gz" in text
    for sub, scale in (("a", 1.0), ("b", 0.5)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "m.yaml").write_text(
            text.replace("current_mA: 1.0", f"current_mA: {scale}").replace("current_mA: -1.0",
                                                                              f"current_mA: {-scale}"))
    files = [tmp_path / "a" / "m.yaml", tmp_path / "b" / "m.yaml"]
    first = run(["batch", *files, "--out", "res"], cwd=tmp_path / "a")  # cwd is not the protocols' folder
    assert first.returncode == 0, first.stderr
    folders = sorted((tmp_path / "a" / "res").iterdir())
    assert len(folders) == 2  # two inputs with one file name: two results
    hashes = {json.loads((f / "summary.json").read_text())["inputs"]["protocol_sha256"] for f in folders}
    assert len(hashes) == 2
    resumed = run(["batch", *files, "--out", "res"], cwd=tmp_path / "a")
    assert resumed.stdout.count("(done earlier)") == 2
    # edit one protocol: its result is recomputed, the other reused
    files[1].write_text(files[1].read_text().replace("current_mA: 0.5", "current_mA: 0.7")
                        .replace("current_mA: -0.5", "current_mA: -0.7"))
    edited = run(["batch", *files, "--out", "res"], cwd=tmp_path / "a")
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.count("(done earlier)") == 1
    line_a, line_b = edited.stdout.strip().splitlines()
    peak = {ln.split(":")[0]: float(ln.split("peak |E| ")[1].split(" ")[0]) for ln in (line_a, line_b)}
    assert sorted(peak.values())[1] / sorted(peak.values())[0] == pytest.approx(1 / 0.7, rel=1e-3)


def test_results_folder_api_cleans_up_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with ResultsFolder(tmp_path / "a" / "b" / "res") as folder:
            (folder.path / "fields.msh").write_text("partial")
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_a_library_call_waits_for_the_writers_too():
    """Python's own SIGINT handler (KeyboardInterrupt, e.g. in a notebook) is held the same way."""
    from stimsim.outputs import signals_deferred

    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                reached.append("after the signal")
        assert reached == ["after the signal"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_signal_while_writers_start_waits_for_them():
    """The CLI's handler raises; inside signals_deferred the signal is kept and delivered when the
    block ends (a raise inside ThreadPoolExecutor.submit left a writer nobody joined: the results
    folder was removed under it and came back with a half-written file)."""
    from stimsim.cli.process import Interrupted, raise_on_signal
    from stimsim.outputs import signals_deferred

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, raise_on_signal)
    reached = []
    try:
        with pytest.raises(Interrupted) as info:
            with signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                reached.append("after the signal")
        assert info.value.signum == signal.SIGTERM
        assert reached == ["after the signal"]
        with pytest.raises(Interrupted):  # outside the block the handler raises at once
            signal.signal(signal.SIGTERM, raise_on_signal)
            signal.raise_signal(signal.SIGTERM)
            reached.append("not reached")
        assert reached == ["after the signal"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
