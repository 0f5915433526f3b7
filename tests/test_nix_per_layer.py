"""examples/nix-per-layer built with real Nix: one derivation per layer, then the image."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import closurepack as closurepack_package
from runtimes import PodmanRunner

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nix-per-layer"
GREETING = "Hello from an image that closurepack built!"
TAG = "hello:latest"
# Single-user Nix as root, and no binary cache to ask (there is no network).
NIX_OPTIONS = ("--option", "build-users-group", "", "--option", "substituters", "")


def _closurepack_executable() -> str:
    """The real closurepack script: a pyenv shim would need PATH and HOME, which builders lack."""
    beside_python = Path(sysconfig.get_path("scripts")) / "closurepack"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("closurepack")
    if found is None:
        pytest.skip("the closurepack executable is not installed")
    return found


def _require_nix() -> None:
    for tool in ("nix-build", "nix-instantiate", "nix-store"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.isfile("/bin/busybox"):
        pytest.skip("/bin/busybox (Debian busybox-static) is not installed")


def _run(argv: Sequence[str | Path], *, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{shlex.join(map(str, argv))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _closurepack_id() -> str:
    """A hash of the code of the closurepack under test, so that Nix rebuilds the example's
    layers whenever that code changes (it cannot see into the host path it is given)."""
    digest = hashlib.sha256()
    for path in sorted(Path(closurepack_package.__file__).parent.rglob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _nix(tool: str, closurepack: str, *args: str) -> list[str]:
    """Run nix-build or nix-instantiate on the example; return its stdout lines."""
    argv = [tool, *NIX_OPTIONS, str(EXAMPLE), "--argstr", "closurepack", closurepack]
    argv += ["--argstr", "closurepackId", _closurepack_id(), *args]
    if tool == "nix-build":
        argv.insert(1, "--no-out-link")
    return _run(argv).split()


def _references(path: str) -> list[str]:
    return _run(["nix-store", "--query", "--references", path]).split()


def _is_layer(path: str) -> bool:
    return re.fullmatch(r"/nix/store/[0-9a-z]{32}-closurepack-layer-.+", path) is not None


def _descriptor(directory: Path) -> dict[str, object]:
    doc = json.loads((directory / "layer.json").read_text())
    assert isinstance(doc, dict)
    return doc


def _descriptor_paths(directory: Path) -> list[object]:
    paths = _descriptor(directory)["paths"]
    assert isinstance(paths, list)
    return paths


@dataclass(frozen=True)
class Built:
    """The example built by nix-build: the image and the pieces it was made of."""

    closurepack: str
    image: Path
    plan: Path
    app: str
    layers: tuple[Path, ...]  # outputs of the layer derivations, bottom first

    @property
    def plan_layers(self) -> list[list[str]]:
        doc = json.loads(self.plan.read_text())
        return [layer["paths"] for layer in doc["images"][0]["layers"]]


@pytest.fixture(scope="module")
def built() -> Built:
    _require_nix()
    closurepack = _closurepack_executable()
    (image,) = _nix("nix-build", closurepack)
    plan, app, *layers = _nix("nix-build", closurepack, "-A", "plan", "-A", "app", "-A", "layers")
    assert plan.endswith("-closurepack-plan")
    assert app.endswith("-hello")
    assert all(map(_is_layer, layers)), layers
    by_items = {tuple(map(str, _descriptor_paths(Path(p)))): Path(p) for p in layers}
    plan_layers = json.loads(Path(plan).read_text())["images"][0]["layers"]
    return Built(
        closurepack=closurepack,
        image=Path(image),
        plan=Path(plan),
        app=app,
        layers=tuple(by_items[tuple(layer["paths"])] for layer in plan_layers),
    )


def _inspect(closurepack: str, image: str) -> dict[str, object]:
    info = json.loads(_run([closurepack, "inspect", "--json", image]))
    assert isinstance(info, dict)
    return info


def test_plan_covers_the_closure_once(built: Built) -> None:
    closure = sorted(_run(["nix-store", "--query", "--requisites", built.app]).split())
    planned = [path for layer in built.plan_layers for path in layer]
    assert sorted(planned) == closure
    assert len(built.plan_layers) == len(built.layers) >= 2
    # The graph file is named after the app, and so is the plan's image.
    assert json.loads(built.plan.read_text())["images"][0].get("name") == "hello"


def test_one_derivation_per_layer(built: Built) -> None:
    (image_drv,) = _nix("nix-instantiate", built.closurepack)
    layer_drvs = [p for p in _references(image_drv) if p.endswith(".drv") and _is_layer(p[:-4])]
    outputs = {
        Path(_run(["nix-store", "--query", "--outputs", drv]).strip()): drv for drv in layer_drvs
    }
    assert len(layer_drvs) == len(built.plan_layers)
    assert sorted(outputs) == sorted(built.layers)
    for index, directory in enumerate(built.layers):
        # Its inputs are exactly the store items of its layer: no other layer and not even the
        # plan, so Nix may build the layers at the same time, and a layer whose items stay the
        # same keeps its derivation when the rest of the closure changes.
        assert sorted(_references(outputs[directory])) == sorted(built.plan_layers[index])


def test_unchanged_layers_keep_their_derivations(built: Built) -> None:
    # A new app on top of the old one: the old closure's layers should not need rebuilding.
    new_app = f"""derivation {{
      name = "hello-v2"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "echo ${{import {EXAMPLE.parent / "hello"}}} > $out" ];
    }}"""

    def layer_drvs(*args: str) -> set[str]:
        return set(_nix("nix-instantiate", built.closurepack, "-A", "layers", *args))

    for layer_input, kept in (("paths", len(built.plan_layers)), ("plan", 0)):
        before = layer_drvs("--argstr", "layerInput", layer_input)
        after = layer_drvs("--argstr", "layerInput", layer_input, "--arg", "app", new_app)
        assert len(after) == len(before) + 1  # one more item, in a layer of its own
        assert len(before & after) == kept, layer_input


def test_layer_input_plan_gives_the_same_image(built: Built) -> None:
    # build-layer --plan FILE --layer N makes the same blobs as build-layer STORE_PATH...
    (image,) = _nix("nix-build", built.closurepack, "--argstr", "layerInput", "plan")
    assert Path(image) != built.image
    assert Path(image).read_bytes() == built.image.read_bytes()


def test_each_layer_output_holds_its_blob(built: Built) -> None:
    for index, directory in enumerate(built.layers):
        descriptor = _descriptor(directory)
        assert descriptor["paths"] == built.plan_layers[index]
        blob = directory / str(descriptor["blob"])
        digest = _run(["sha256sum", blob]).split()[0]
        assert descriptor["digest"] == f"sha256:{digest}"
        assert descriptor["size"] == blob.stat().st_size


def test_image_verifies(built: Built) -> None:
    out = _run([built.closurepack, "verify", f"docker-archive:{built.image}"])
    assert out.strip().endswith(": ok")


@pytest.mark.parametrize(
    ("args", "compression"),
    [
        ((), "gzip"),
        (("--arg", "maxLayers", "3", "--argstr", "compression", "zstd"), "zstd"),
    ],
    ids=["default", "merged-zstd"],
)
def test_image_equals_a_direct_build_of_the_same_plan(
    built: Built, tmp_path: Path, args: tuple[str, ...], compression: str
) -> None:
    if args:
        (image,) = _nix("nix-build", built.closurepack, *args)
        plan, *layers = _nix("nix-build", built.closurepack, *args, "-A", "plan", "-A", "layers")
        layer_dirs = [Path(p) for p in layers]
        plan_layers = [
            layer["paths"] for layer in json.loads(Path(plan).read_text())["images"][0]["layers"]
        ]
        # Three layers at most, one of them the customisation layer: items are merged, and
        # a merged layer is named after its first item and how many more it holds (the default
        # --min-layer-size may fold the tiny items into one layer).
        assert len(plan_layers) in (1, 2)
        assert any(len(paths) > 1 for paths in plan_layers)
        assert any(re.search(r"-closurepack-layer-.+-and-\d+$", str(p)) for p in layer_dirs)
        out = _run([built.closurepack, "verify", f"docker-archive:{image}"])
        assert out.strip().endswith(": ok")
    else:  # what the fixture built (and test_image_verifies verifies)
        image, plan = str(built.image), str(built.plan)
        layer_dirs, plan_layers = list(built.layers), built.plan_layers

    direct = tmp_path / "direct.tar"
    _run(
        [
            built.closurepack,
            "build",
            "--plan",
            plan,
            "--compression",
            compression,
            "--created",
            "1",
            "--no-cache",
            "--quiet",
            "--entrypoint",
            json.dumps([f"{built.app}/bin/hello"]),
            "--tag",
            TAG,
            "-o",
            f"docker-archive:{direct}",
        ]
    )
    from_nix = _inspect(built.closurepack, f"docker-archive:{image}")
    from_build = _inspect(built.closurepack, f"docker-archive:{direct}")
    nix_layers = from_nix["layers"]
    build_layers = from_build["layers"]
    assert isinstance(nix_layers, list)
    assert isinstance(build_layers, list)
    # The plan's layers, in order, then the customisation layer (/tmp) that both add.
    assert [layer["paths"] for layer in nix_layers] == [*plan_layers, []]
    assert {layer["media_type"] for layer in nix_layers} == {
        f"application/vnd.oci.image.layer.v1.tar+{compression}"
    }
    assert [layer["digest"] for layer in nix_layers] == [layer["digest"] for layer in build_layers]
    assert [layer["diff_id"] for layer in nix_layers] == [
        layer["diff_id"] for layer in build_layers
    ]
    descriptors = {tuple(map(str, _descriptor_paths(d))): _descriptor(d) for d in layer_dirs}
    for layer in nix_layers[:-1]:
        assert layer["digest"] == descriptors[tuple(layer["paths"])]["digest"]
    assert from_nix["manifest_digest"] == from_build["manifest_digest"]


def test_image_runs_in_podman(built: Built, podman_runner: PodmanRunner) -> None:
    reference = podman_runner.load(built.image)
    output = podman_runner.run(reference)
    assert output.splitlines()[0] == GREETING
    assert "running on Linux as uid 0" in output


def test_text_graph_gives_the_same_plan(built: Built) -> None:
    # The text graph has no sizes, so closurepack measures the store files; the structured-attrs
    # JSON carries Nix's own NAR sizes. Both must lead to the same plan, byte for byte.
    (text_plan,) = _nix(
        "nix-build", built.closurepack, "--argstr", "graphFormat", "text", "-A", "plan"
    )
    assert Path(text_plan) != built.plan  # a different derivation
    assert Path(text_plan).read_bytes() == built.plan.read_bytes()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("graphFormat", 'graphFormat must be "json" or "text", not "xml"'),
        ("layerInput", 'layerInput must be "paths" or "plan", not "xml"'),
    ],
)
def test_unknown_choice_is_refused(built: Built, option: str, message: str) -> None:
    argv = [
        "nix-instantiate",
        *NIX_OPTIONS,
        str(EXAMPLE),
        "--argstr",
        "closurepack",
        built.closurepack,
        "--argstr",
        option,
        "xml",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


_WRAPPER = """\
#!/bin/sh
# closurepack, logging when each call starts and ends (builders have no PATH).
log={log_dir}/$$
echo "$1 start $(/bin/date +%s.%N)" > "$log"
[ "$1" = build-layer ] && /bin/sleep 1
{closurepack} "$@"
status=$?
echo "$1 end $(/bin/date +%s.%N)" >> "$log"
exit $status
"""


def test_layers_build_in_parallel(built: Built, tmp_path: Path) -> None:
    # A wrapper at a fresh path makes every derivation new, so Nix really builds them all now.
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    wrapper = tmp_path / "closurepack"
    wrapper.write_text(
        _WRAPPER.format(
            log_dir=shlex.quote(str(log_dir)), closurepack=shlex.quote(built.closurepack)
        )
    )
    wrapper.chmod(0o755)
    count = len(built.plan_layers)
    (image,) = _nix("nix-build", str(wrapper), "--max-jobs", str(count))

    calls: dict[str, list[tuple[float, float]]] = {}
    for log in log_dir.iterdir():
        (command, _, start), (_, _, end) = (line.split() for line in log.read_text().splitlines())
        calls.setdefault(command, []).append((float(start), float(end)))
    assert sorted(calls) == ["assemble", "build-layer", "plan"]
    assert len(calls["plan"]) == len(calls["assemble"]) == 1
    layer_calls = calls["build-layer"]
    assert len(layer_calls) == count
    (plan_call,) = calls["plan"]
    (assemble_call,) = calls["assemble"]
    # The plan comes first (Nix builds it while evaluating), every layer call runs at the same
    # time as every other (each sleeps a second), and the image is assembled after them all.
    assert plan_call[1] <= min(start for start, _ in layer_calls)
    assert max(start for start, _ in layer_calls) < min(end for _, end in layer_calls)
    assert assemble_call[0] >= max(end for _, end in layer_calls)
    # Same plan, same options: the same image as the one built without the wrapper.
    assert Path(image).read_bytes() == built.image.read_bytes()
