"""Check an installed platform environment needs no system GDAL, GEOS, PROJ or libpq.

    python docker/check_libs.py VENV

Every compiled module under VENV must link only against libraries that its wheels bring (pyogrio
bundles GDAL, shapely GEOS, pyproj PROJ, psycopg[binary] libpq) or that python:3.11-slim has (glibc,
the C++ runtime, zlib, expat). Run by the image's build stage and by docker/build-steps.sh; exits 1
naming each module and the library it would need from the system.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# present in python:3.11-slim (Debian bookworm) without any apt-get: glibc and the loader, libgcc/libstdc++
# (apt needs them), zlib1g (essential) and the libraries CPython itself links (expat, ssl, ffi, sqlite, lzma, bz2)
SLIM = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2", "libutil.so.1",
        "libnsl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1", "libexpat.so.1", "libssl.so.3",
        "libcrypto.so.3", "libffi.so.8", "libsqlite3.so.0", "liblzma.so.5", "libbz2.so.1.0", "libuuid.so.1"}
_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(not found|\S+)")


def shared_objects(venv: Path) -> list[Path]:
    """Every compiled module and bundled library under the environment."""
    return sorted(p for p in venv.rglob("*") if p.is_file() and re.search(r"\.so(\.\d+)*$", p.name))


def foreign_libraries(venv: Path) -> dict[str, list[str]]:
    """Library → the files needing it, for each library that neither the wheels nor python:3.11-slim provide."""
    files = shared_objects(venv)
    bundled = {p.name for p in files}
    root = str(venv.resolve())
    missing: dict[str, list[str]] = {}
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = _LINE.match(line)
            if m is None:
                continue
            name, where = m.groups()
            if where == "not found":
                ok = name in bundled  # a wheel's .libs sibling, found through the loading module's RPATH
            else:
                ok = str(Path(where).resolve()).startswith(root) or name in SLIM or name.startswith("ld-linux")
            if not ok:
                missing.setdefault(f"{name} ({where})", []).append(str(path.relative_to(venv)))
    return missing


def main(argv: list[str]) -> int:
    """Print the bundled GDAL/GEOS/PROJ/libpq versions and fail when a system library is needed."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    venv = Path(argv[0])
    import psycopg
    import pyogrio
    import pyproj
    import shapely

    print(f"GDAL {pyogrio.__gdal_version_string__} (pyogrio wheel), GEOS {shapely.geos_version_string} "
          f"(shapely wheel), PROJ {pyproj.proj_version_str} (pyproj wheel), libpq {psycopg.pq.version()} "
          f"(psycopg {psycopg.pq.__impl__})")
    if psycopg.pq.__impl__ != "binary":
        print("psycopg runs its pure-Python libpq binding: the system would need libpq5", file=sys.stderr)
        return 1
    files = shared_objects(venv)
    missing = foreign_libraries(venv)
    for lib, users in sorted(missing.items()):
        print(f"needs {lib} from the system: {', '.join(users[:3])}{' …' if len(users) > 3 else ''}",
              file=sys.stderr)
    if missing:
        return 1
    print(f"{len(files)} compiled modules and libraries: no system library beyond python:3.11-slim's")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
