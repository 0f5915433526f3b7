"""Small files of a base image (``/etc/passwd``, ``/etc/group``) read from its layers as a
container runtime would see them: the topmost layer that has the file, or removes it with a
whiteout, decides."""

from __future__ import annotations

import dataclasses
import posixpath
import tarfile
from collections.abc import Iterable, Sequence

from closurepack.accounts import base_home
from closurepack.customisation import Customisation
from closurepack.decompression import open_decompressed
from closurepack.errors import ClosurepackError, ImageError
from closurepack.image import ImageLayer

__all__ = ["read_base_files", "with_base_accounts"]

#: Files larger than this are not plausible account databases: they are not read.
_LIMIT = 16 << 20
_OPAQUE = ".wh..wh..opq"


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _hidden_by(name: str, wanted: str) -> bool:
    """Whether the layer entry ``name`` is a whiteout removing ``wanted`` (or a parent of it),
    or an opaque whiteout of one of its parents (OCI image spec, layer whiteouts)."""
    directory, base = posixpath.split(name)
    if base == _OPAQUE:
        return wanted.startswith(directory + "/") if directory else True
    if not base.startswith(".wh."):
        return False
    removed = posixpath.join(directory, base[4:])
    return wanted == removed or wanted.startswith(removed + "/")


#: What a layer says of a name: whether it is there, and its content when a regular file.
_Decided = tuple[bool, bytes | None]


def _scan_layer(layer: ImageLayer, wanted: Iterable[str], where: str) -> dict[str, _Decided]:
    """For each wanted name this layer decides: (present, its content or None when it is
    removed or not a regular file). Names the layer does not touch are absent."""
    names = set(wanted)
    found: dict[str, _Decided] = {}
    hidden: set[str] = set()
    try:
        with (
            layer.open() as blob,
            open_decompressed(layer.media_type.compression, blob) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,  # type: ignore[call-overload]
        ):
            for member in tar:
                name = _norm(member.name)
                for want in names:
                    if name == want:
                        data = None
                        if member.isfile() and member.size <= _LIMIT:
                            handle = tar.extractfile(member)
                            data = handle.read() if handle is not None else None
                        found[want] = (True, data)
                    elif _hidden_by(name, want):
                        hidden.add(want)  # from lower layers: this layer's own file stays
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ImageError(f"{where}: layer {layer.digest}: cannot read: {exc}") from exc
    except ClosurepackError as exc:
        raise ImageError(f"{where}: layer {layer.digest}: {exc}") from exc
    return dict.fromkeys(hidden, (False, None)) | found


def _decide(layers: Sequence[ImageLayer], names: Sequence[str], where: str) -> dict[str, _Decided]:
    """What the image made of ``layers`` (bottom first) has at each of ``names``, its layers
    read from the top down and only until every name is decided."""
    result: dict[str, _Decided] = {}
    todo = [_norm(name) for name in names]
    for layer in reversed(layers):
        if not todo:
            break
        decided = _scan_layer(layer, todo, where)
        result.update(decided)
        todo = [name for name in todo if name not in decided]
    return result | dict.fromkeys(todo, (False, None))


def read_base_files(
    layers: Sequence[ImageLayer], names: Sequence[str], *, where: str
) -> dict[str, bytes | None]:
    """The content of each of ``names`` (``etc/passwd``) in the image made of ``layers`` (bottom
    first), None when it has none."""
    return {name: data for name, (_, data) in _decide(layers, names, where).items()}


def with_base_accounts(
    customisation: Customisation, layers: Sequence[ImageLayer], *, where: str
) -> Customisation:
    """``customisation`` on the ``--from`` image of ``layers``: ``--user NAME`` is looked up in
    (and added to) that image's /etc/passwd and /etc/group, which are read only when needed;
    a user the image has whose home it lacks gets that home (``make_base_home``)."""
    customisation = dataclasses.replace(customisation, from_base=True)
    if not customisation.named_user:
        return customisation
    files = read_base_files(layers, ["etc/passwd", "etc/group"], where=where)
    customisation = dataclasses.replace(
        customisation, base_passwd=files["etc/passwd"], base_group=files["etc/group"]
    )
    home = base_home(customisation.user, files["etc/passwd"])
    if home is not None and not _decide(layers, [home], where)[_norm(home)][0]:
        customisation = dataclasses.replace(customisation, make_base_home=True)
    return customisation
