"""Real container runtimes for end-to-end tests: podman with its own storage, and a Docker
engine each test session starts (and stops) itself.

Session fixtures ``podman_runner`` and ``docker_engine`` (registered in conftest.py) give an
object with ``load(archive_path) -> image reference`` and ``run(image, *cmd) -> stdout``.
``partial_podman`` (per test) is podman on the overlay driver with partial pulls enabled
(zstd:chunked), in a storage of its own: :class:`PartialPodman`.
They skip the test cleanly when the tool is missing or cannot run here. Other helpers:
``require_tool(name)`` and ``run_tool(*argv)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "DockerEngine",
    "PartialPodman",
    "PodmanRunner",
    "docker_engine",
    "open_partial_podman",
    "partial_podman",
    "podman_runner",
    "require_tool",
    "run_tool",
]

_RUN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH, or skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run_tool(
    *argv: str | Path,
    timeout: float = 300,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command; return its stdout; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    return proc.stdout.decode(errors="replace")


def _loaded_reference(output: str) -> str:
    """The image reference from ``docker load`` / ``podman load`` output (last one named)."""
    ref = ""
    for line in output.splitlines():
        for prefix in ("Loaded image ID: ", "Loaded image(s): ", "Loaded image: "):
            if line.startswith(prefix):
                ref = line[len(prefix) :].split(",")[0].strip()
                break
    if not ref:
        pytest.fail(f"cannot find the loaded image in: {output!r}")
    return ref


@dataclass
class PodmanRunner:
    """podman with vfs storage and runc, its root and runroot in a temp directory."""

    root: Path

    def command(self, *args: str | Path) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root / "root"),
            "--runroot",
            str(self.root / "run"),
            # its own libpod tmp dir too (default /run/libpod, shared with every other podman
            # here: another session's reset removed it under this one)
            "--tmpdir",
            str(self.root / "tmp"),
            "--storage-driver=vfs",
            "--runtime=runc",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            *map(str, args),
        ]

    def load(self, archive: Path) -> str:
        """``podman load`` a docker-archive or oci-archive; return the image reference."""
        return _loaded_reference(run_tool(*self.command("load", "-i", archive)))

    def run(self, image: str, *cmd: str, timeout: float = 120) -> str:
        """Run ``cmd`` in ``image`` without network; return its stdout."""
        argv = self.command("run", "--rm", "--network=none", *_RUN_LIMITS, image, *cmd)
        return run_tool(*argv, timeout=timeout)


# containers-storage.conf(5): overlay, a private graphroot and runroot, and the pull options
# that turn partial (zstd:chunked) pulls on; no hard links or ostree repositories as sources.
_PARTIAL_STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/root"
runroot = "{root}/run"

[storage.options]
pull_options = {{enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}}
"""


@dataclass
class PartialPodman:
    """podman on the overlay driver with ``enable_partial_images``, its storage under
    ``root`` (``CONTAINERS_STORAGE_CONF`` points at its own storage.conf)."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf")}

    def command(self, *args: str | Path) -> list[str]:
        return [
            "podman",
            "--tmpdir",
            str(self.root / "tmp"),
            "--runtime=runc",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            *map(str, args),
        ]

    def pull(self, ref: str, *, timeout: float = 600) -> str:
        """``podman --log-level=debug pull`` (plain HTTP); return its debug log."""
        argv = self.command("--log-level=debug", "pull", "--tls-verify=false", ref)
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=self.env, check=False)
        log = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            pytest.fail(f"podman pull {ref} exited {proc.returncode}:\n{log[-3000:]}")
        return log

    def run(self, image: str, *cmd: str, timeout: float = 120) -> str:
        argv = self.command("run", "--rm", "--network=none", *_RUN_LIMITS, image, *cmd)
        return run_tool(*argv, timeout=timeout, env=self.env)

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """The image's merged file tree, mounted while the block runs."""
        path = run_tool(*self.command("image", "mount", image), env=self.env).strip()
        try:
            yield Path(path)
        finally:
            run_tool(*self.command("image", "unmount", image), env=self.env)

    def reset(self) -> None:
        subprocess.run(
            self.command("system", "reset", "--force"),
            capture_output=True,
            env=self.env,
            timeout=300,
            check=False,
        )


@contextlib.contextmanager
def open_partial_podman(directory: Path) -> Iterator[PartialPodman]:
    """A :class:`PartialPodman` with its storage in ``directory``, reset and removed after."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "storage.conf").write_text(_PARTIAL_STORAGE_CONF.format(root=directory))
    runner = PartialPodman(directory)
    try:
        yield runner
    finally:
        runner.reset()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def partial_podman() -> Iterator[PartialPodman]:
    """podman with overlay storage and partial pulls on, for one test (skips without podman)."""
    require_tool("podman")
    require_tool("runc")
    with open_partial_podman(Path(tempfile.mkdtemp(prefix="cp-partial-"))) as runner:
        probe = subprocess.run(
            runner.command("info"), capture_output=True, env=runner.env, timeout=120, check=False
        )
        if probe.returncode != 0:
            pytest.skip(f"podman cannot use overlay here: {probe.stderr.decode()[-500:]}")
        yield runner


@dataclass
class DockerEngine:
    """A private dockerd (vfs, no networking) on a unix socket in a short temp directory."""

    directory: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.directory}/sock"}

    def docker(self, *args: str | Path, timeout: float = 300) -> str:
        return run_tool("docker", *args, timeout=timeout, env=self.env)

    def load(self, archive: Path) -> str:
        """``docker load`` an archive; return the image reference (name:tag or ID)."""
        return _loaded_reference(self.docker("load", "-i", archive))

    def run(self, image: str, *cmd: str, timeout: float = 120) -> str:
        """Run ``cmd`` in ``image`` without network; return its stdout."""
        return self.docker("run", "--rm", "--network", "none", image, *cmd, timeout=timeout)


@pytest.fixture(scope="session")
def podman_runner() -> Iterator[PodmanRunner]:
    """A podman with private storage for the session; skipped when podman cannot run."""
    require_tool("podman")
    require_tool("runc")
    root = Path(tempfile.mkdtemp(prefix="cp-podman-"))
    runner = PodmanRunner(root)
    probe = subprocess.run(runner.command("info"), capture_output=True, timeout=120, check=False)
    if probe.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"podman cannot run here: {probe.stderr.decode(errors='replace')[-500:]}")
    try:
        yield runner
    finally:
        subprocess.run(
            runner.command("system", "reset", "--force"), capture_output=True, check=False
        )
        shutil.rmtree(root, ignore_errors=True)


def _stop(pid_file: Path, proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if pid == proc.pid:
            os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A dockerd started for this session and stopped (by its pid) at the end."""
    require_tool("dockerd")
    require_tool("docker")
    # Short path: unix socket paths are limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="cpd-", dir="/tmp"))
    log = (directory / "log").open("wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            f"{directory}/root",
            "--exec-root",
            f"{directory}/exec",
            "--pidfile",
            f"{directory}/pid",
            "--storage-driver",
            "vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--host",
            f"unix://{directory}/sock",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = DockerEngine(directory)
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                ["docker", "version"], capture_output=True, env=engine.env, check=False
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "log").read_text(errors="replace")[-800:]
                pytest.skip(f"dockerd did not start here: {tail}")
            time.sleep(0.3)
        yield engine
    finally:
        if proc.poll() is None:
            _stop(directory / "pid", proc)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
