"""PEP 517 build backend for dsv4's Python bindings, kept in the tree so that `pip install .` works offline.

scikit-build-core is not packaged by Debian 12 and PyPI may be unreachable, so this small backend does the two
things needed: run the project's CMake (the same build as `-DDSV4_BUILD_PYTHON=ON`) and pack the package
directory into a wheel (PEP 427: the files, *.dist-info/METADATA, WHEEL and RECORD). The CMake build tree is
kept under build/python-wheel, so a second install only rebuilds what changed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BUILD_DIR = ROOT / "build" / "python-wheel"


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _version() -> str:
    header = (ROOT / "include" / "dsv4" / "dsv4.h").read_text()
    parts = [re.search(rf"^#define DSV4_VERSION_{k} (\d+)$", header, re.M) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise RuntimeError("dsv4_build: DSV4_VERSION_* macros not found in include/dsv4/dsv4.h")
    return ".".join(m.group(1) for m in parts)


def _tag() -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{py}-{py}-{platform}"


def _metadata() -> str:
    p = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {_version()}", f"Summary: {p['description']}",
             f"License: {p['license']['text']}", f"Requires-Python: {p['requires-python']}"]
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    readme = ROOT / p["readme"]
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + readme.read_text()


def _dist_info_name() -> str:
    return f"{_project()['name']}-{_version()}.dist-info"


def _write_dist_info(directory: Path) -> Path:
    info = directory / _dist_info_name()
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(_metadata())
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nGenerator: dsv4_build\nRoot-Is-Purelib: false\nTag: {_tag()}\n")
    return info


def _cmake_build() -> Path:
    jobs = str(os.cpu_count() or 2)
    configure = ["cmake", "-S", str(ROOT), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
                 "-DDSV4_BUILD_PYTHON=ON", "-DDSV4_BUILD_TESTS=OFF", "-DDSV4_BUILD_TOOLS=OFF",
                 "-DDSV4_BUILD_EXAMPLES=OFF", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja") and not (BUILD_DIR / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", str(BUILD_DIR), "--target", "_dsv4", "-j", jobs], check=True,
                   stdout=sys.stderr)
    return BUILD_DIR / "bindings" / "python" / "dsv4"


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


# ---- PEP 517 hooks ------------------------------------------------------------------------------------------------
def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _write_dist_info(Path(metadata_directory)).name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    package = _cmake_build()
    name = f"{_project()['name']}-{_version()}-{_tag()}.whl"
    staging = BUILD_DIR / "wheel-staging"
    shutil.rmtree(staging, ignore_errors=True)
    info = _write_dist_info(staging)
    files = [(f"dsv4/{f.name}", f) for f in sorted(package.iterdir()) if f.is_file() and f.suffix != ".pyc"]
    files += [(f"{info.name}/{f.name}", f) for f in sorted(info.iterdir())]
    record = []
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as whl:
        for arcname, path in files:
            data = path.read_bytes()
            whl.writestr(arcname, data)
            record.append(_record_line(arcname, data))
        record.append(f"{info.name}/RECORD,,")
        whl.writestr(f"{info.name}/RECORD", "\n".join(record) + "\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    """The git-tracked files of the tree (build outputs excluded)."""
    base = f"{_project()['name']}-{_version()}"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    name = f"{base}.tar.gz"
    with tarfile.open(Path(sdist_directory) / name, "w:gz") as tar:
        for rel in filter(None, tracked.decode().split("\0")):
            tar.add(ROOT / rel, arcname=f"{base}/{rel}", recursive=False)
        info = _metadata().encode()
        entry = tarfile.TarInfo(f"{base}/PKG-INFO")
        entry.size = len(info)
        tar.addfile(entry, io.BytesIO(info))
    return name
