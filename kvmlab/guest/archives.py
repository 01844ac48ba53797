"""Reading Debian packages without dpkg: the ``ar`` container, its ``data.tar``, zstd.

The test guest is built from ``.deb`` files on hosts that may have neither binutils nor
``dpkg-deb``, so a package is opened in Python: the ``ar`` archive by hand (a few headers),
then its ``data.tar.*`` member with :mod:`tarfile`.
"""

from __future__ import annotations

import importlib
import io
import sys
import tarfile

from kvmlab.errors import GuestBuildError

__all__ = ["AR_MAGIC", "deb_data_tar", "read_ar", "read_member", "zstd_decompress"]

#: The first bytes of an ``ar`` archive, so of every ``.deb``.
AR_MAGIC = b"!<arch>\n"


def read_ar(data: bytes) -> dict[str, bytes]:
    """Return the members of a System V / GNU ``ar`` archive (a ``.deb``) by name.

    A ``.deb`` is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
    ``data.tar.*``; reading it here spares a dependency on binutils or dpkg-deb.

    :param data: the whole archive.
    :return: member name (without the GNU trailing ``/``) to its bytes, in archive order.
    :raise GuestBuildError: the data is not an ``ar`` archive or is truncated.
    """
    if not data.startswith(AR_MAGIC):
        raise GuestBuildError("not an ar archive (a .deb starts with '!<arch>')")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise GuestBuildError(f"corrupt ar header at offset {pos}")
        name = header[:16].decode("ascii", "replace").rstrip()
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise GuestBuildError(f"corrupt ar member size at offset {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise GuestBuildError(f"ar member {name!r} is truncated")
        if name.startswith("#1/"):  # BSD long name: stored before the data
            name_len = int(name[3:])
            name = data[start : start + name_len].rstrip(b"\0").decode()
            members[name] = data[start + name_len : start + size]
        else:
            members[name.removesuffix("/")] = data[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return members


def zstd_decompress(data: bytes, what: str) -> bytes:
    """Decompress zstd data with whatever the interpreter offers, or say what is missing."""
    for module_name in ("compression.zstd", "zstandard"):  # Python 3.14+, then PyPI
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "zstandard":
            out = module.ZstdDecompressor().decompressobj().decompress(data)
        else:
            out = module.decompress(data)
        return bytes(out)
    raise GuestBuildError(
        f"{what} is zstd-compressed and this Python ({sys.version.split()[0]}) cannot read it: "
        "Python 3.14's compression.zstd or the 'zstandard' package is needed"
    )


def deb_data_tar(deb: bytes, what: str) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a ``.deb`` as a streaming tar reader.

    Debian 12 compresses it with xz; Ubuntu and newer dpkg may use zstd, which the standard
    library reads only from Python 3.14.
    """
    members = read_ar(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise GuestBuildError(f"{what} has no data.tar member: not a binary package")
    stream = io.BytesIO(members[name])
    if name == "data.tar.zst":
        return tarfile.open(fileobj=io.BytesIO(zstd_decompress(stream.read(), f"{what}:{name}")))
    if name == "data.tar.xz":
        return tarfile.open(fileobj=stream, mode="r|xz")
    if name == "data.tar.gz":
        return tarfile.open(fileobj=stream, mode="r|gz")
    if name == "data.tar.bz2":
        return tarfile.open(fileobj=stream, mode="r|bz2")
    if name == "data.tar":
        return tarfile.open(fileobj=stream, mode="r|")
    raise GuestBuildError(f"{what}: unsupported member {name}")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """Return the bytes of one regular file of a (streaming) tar archive."""
    handle = tar.extractfile(member)
    if handle is None:
        raise GuestBuildError(f"cannot read {member.name} from the package")
    with handle:
        return handle.read()
