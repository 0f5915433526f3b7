"""The process's fast exit (closurepack.cli.fastexit): run in child interpreters, since the
point is what happens when the process ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _run(code: str, *, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_atexit_handlers_run_streams_flushed_status_kept() -> None:
    done = _run(
        """
        import atexit, sys
        from closurepack.cli.fastexit import exit_process
        atexit.register(lambda: sys.stdout.write("handler ran\\n"))
        sys.stdout.write("buffered, no newline flush")
        sys.stderr.write("to stderr")
        exit_process(3)
        """
    )
    assert done.returncode == 3
    assert done.stdout == "buffered, no newline flushhandler ran\n"
    assert done.stderr == "to stderr"


def test_teardown_is_skipped_when_only_the_main_thread_is_left() -> None:
    # An object whose finaliser only the interpreter's teardown would call: the fast exit
    # skips it, the usual sys.exit runs it (so the test can tell the two apart).
    code = """
        import sys
        class Noisy:
            def __del__(self):
                sys.stderr.write("teardown ran")
        kept = Noisy()
        from closurepack.cli.fastexit import exit_process
        {}
        """
    fast = _run(code.format("exit_process(0)"))
    usual = _run(code.format("sys.exit(0)"))
    assert (fast.returncode, usual.returncode) == (0, 0)
    assert "teardown ran" not in fast.stderr
    assert "teardown ran" in usual.stderr


def test_a_live_thread_gets_the_usual_exit_and_finishes(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    done = _run(
        f"""
        import threading, time
        from closurepack.cli.fastexit import exit_process
        def late():
            time.sleep(0.3)
            open({str(marker)!r}, "w").write("finished")
        threading.Thread(target=late).start()
        exit_process(5)
        """
    )
    assert done.returncode == 5
    assert marker.read_text() == "finished"


def test_a_stdout_that_cannot_be_flushed_gets_the_usual_exit() -> None:
    # The usual exit reports the lost output and ends with CPython's status for it (120);
    # the fast exit must not hide that behind the requested status.
    code = """
        import os, sys
        from closurepack.cli.fastexit import exit_process
        sys.stdout.write("lost")
        os.close(1)
        {}
        """
    fast = _run(code.format("exit_process(7)"))
    usual = _run(code.format("sys.exit(7)"))
    assert fast.returncode == usual.returncode != 0
    assert "Bad file descriptor" in fast.stderr


def test_the_program_and_python_m_end_through_the_fast_exit(tmp_path: Path) -> None:
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert 'closurepack = "closurepack.cli:run"' in pyproject
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    for module in ("closurepack", "closurepack.cli"):
        version = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert version.returncode == 0
        assert version.stdout.startswith("closurepack, version ")
        bad = subprocess.run(
            [sys.executable, "-m", module, "plan", str(tmp_path / "missing.json")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert bad.returncode != 0
        assert len(bad.stderr.strip().splitlines()) == 1
        assert "missing.json" in bad.stderr
