#!/bin/sh
# The image's build steps as a plain script that runs on this machine, without Docker:
#
#     sh docker/build-steps.sh [DIR]        # DIR: a new temp dir when not given; removed only by you
#
# It copies the repository to DIR/src leaving out what docker/Dockerfile.dockerignore leaves out of
# the build context (the Dockerfile's `COPY . /src`), then runs the lines marked `# RUN`. Those lines
# are the Dockerfile's build-stage RUN instructions word for word and in the same order
# (tests/test_docker.py checks it): a venv, `pip install` of the repository, `udp --help`, and
# docker/check_libs.py, which fails when a compiled module needs a system library python:3.11-slim
# lacks (GDAL, GEOS, PROJ and libpq come inside the pyogrio, shapely, pyproj and psycopg wheels, so
# there is no apt-get step). The Dockerfile sets SRC=/src and VENV=/opt/udp; here they are DIR/src
# and DIR/venv. The last line printed is the venv's path.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/udp-build-steps-XXXXXX")}
SRC="$DIR/src"
VENV="$DIR/venv"
export SRC VENV

if ! python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "note: python here is $(python -V 2>&1), the image has Python 3.11" >&2
fi

# COPY . /src (with the build context's exclusions: `**/x` and `x` both mean any x here)
mkdir -p "$SRC"
sed -e '/^#/d' -e '/^[[:space:]]*$/d' -e 's|^\*\*/||' "$REPO/docker/Dockerfile.dockerignore" > "$DIR/excludes"
tar -C "$REPO" --exclude-from="$DIR/excludes" -cf - . | tar -C "$SRC" -xf -

python -m venv "$VENV"                                                  # RUN
"$VENV/bin/pip" install --no-cache-dir -c "$SRC/constraints.txt" "$SRC"  # RUN
"$VENV/bin/udp" --help                                                  # RUN
"$VENV/bin/python" "$SRC/docker/check_libs.py" "$VENV"                  # RUN

echo "$VENV"
