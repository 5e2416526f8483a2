"""A stand-in for ``python:3.11-slim`` built from Debian packages, for machines that cannot pull it.

``mmdebstrap`` builds a minimal Debian root file system of the host's release, from the Debian
mirror the host's apt uses, with what the Dockerfile expects of its base: ``python`` (3.11 on
bookworm) with ``venv``, apt, ``useradd`` and CA certificates. Documentation, man pages and
locales are left out, as in the official slim images. The tarball is cached outside the checkout
(``MEASURE_CACHE_DIR``, default ``/var/cache/measure-cache``), keyed by the recipe, so a rerun
only imports it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# What `podman import` records as the image's config: the parts of the official image we rely on.
IMAGE_CHANGES = ("ENV LANG=C.UTF-8", 'CMD ["python3"]')


def cache_dir() -> Path:
    """Where built base tarballs are kept between runs."""
    return Path(os.environ.get("MEASURE_CACHE_DIR", "/var/cache/measure-cache"))


def host_release() -> str:
    """The host's Debian codename, e.g. ``bookworm``."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no VERSION_CODENAME in /etc/os-release: not a Debian host")


def host_sources() -> list[Path]:
    """The host's apt source files for Debian itself (not third-party repositories)."""
    candidates = [Path("/etc/apt/sources.list"),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    found = []
    for path in candidates:
        if not path.is_file():
            continue
        text = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        if "/debian" in text:
            found.append(path)
    if not found:
        raise RuntimeError("no Debian source in /etc/apt/sources.list(.d): no mirror to build from")
    return found


def tarball(log: Path) -> Path:
    """The base tarball for this host's release, built with mmdebstrap when not cached."""
    release = host_release()
    sources = host_sources()
    recipe = "\n".join([release, "merged-usr", *PACKAGES, *DPKG_EXCLUDES,
                        *(path.read_text() for path in sources)])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    target = cache_dir() / f"python-base-{release}-{digest}.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    argv = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
        # Merges /usr itself, so the usrmerge package (and the full perl it needs) stays out.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
        release, str(partial), *(str(path) for path in sources),
    ]
    started = time.monotonic()
    with open(log, "ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({result.returncode}); see {log}")
    partial.rename(target)
    print(f"image-test: built base tarball {target} "
          f"({target.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s",
          flush=True)
    return target


def import_image(path: Path, tag: str) -> None:
    """``podman import`` the tarball as ``tag``."""
    argv = ["podman", "import", *(arg for change in IMAGE_CHANGES for arg in ("--change", change)),
            str(path), tag]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
