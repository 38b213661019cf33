#!/usr/bin/env bash
# Build the serving image from the Containerfile (what `make image` runs); prints its size and the
# build time.
#
#   deploy/container/build-image.sh        environment: IMAGE, BASE, DEVICE, ENGINE, BUILD_ARGS, VARIANT
#
# VARIANT serving (default: Containerfile) or kserve (`make image-kserve`: deploy/container/Containerfile.kserve,
#         FROM the serving image SERVING_IMAGE, default localhost/sentiment-torchserve:<version>, which
#         is built first with the same BASE, DEVICE and pip folders: a cache hit when current)
# IMAGE   the tag (default localhost/sentiment-torchserve:<version in pyproject.toml>, for kserve
#         localhost/sentiment-torchserve-kserve:<version>)
# BASE    the base image; unset: localhost/python-base:3.11-bookworm where that exists (built by
#         `make base-image`), else the Containerfile's default, docker.io/library/python:3.11-slim-bookworm.
#         Where that cannot be pulled and debootstrap is installed, the local base is built first.
# DEVICE  cpu (default) or gpu: the archive's TorchServe settings (see deploy/container/README.md)
# ENGINE  podman or docker (default: whichever is installed, podman first)
# BUILD_ARGS  more arguments for `build`, e.g. "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128"
#
# Where this machine's pip reads local package folders (file:// indexes, find-links; `pip config
# list`), podman mounts them read-only into the build stage and the build args name them, with
# pip's CA bundle: the same packages as this machine's .venv, no cache or path left in the image.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$0")/../.."

ENGINE=${ENGINE:-$(basename "$(command -v podman || command -v docker || echo none)")}
[ "$ENGINE" != none ] || { echo "build-image.sh: neither podman nor docker is installed" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
VARIANT=${VARIANT:-serving}
case $VARIANT in
    serving)
        IMAGE=${IMAGE:-localhost/sentiment-torchserve:$VERSION}
        CONTAINERFILE=Containerfile ;;
    kserve)
        IMAGE=${IMAGE:-localhost/sentiment-torchserve-kserve:$VERSION}
        SERVING_IMAGE=${SERVING_IMAGE:-localhost/sentiment-torchserve:$VERSION}
        CONTAINERFILE=deploy/container/Containerfile.kserve ;;
    *) echo "build-image.sh: VARIANT must be serving or kserve, not $VARIANT" >&2; exit 2 ;;
esac
LOCAL_BASE=localhost/python-base:3.11-bookworm
PUBLIC_BASE=docker.io/library/python:3.11-slim-bookworm
DEVICE=${DEVICE:-cpu}

args=(--tag "$IMAGE" --file "$CONTAINERFILE")
[ "$VARIANT" = kserve ] || args+=(--build-arg "DEVICE=$DEVICE")
if [ "$ENGINE" = podman ]; then
    args+=(--format docker --layers)  # docker format keeps HEALTHCHECK
fi

if [ -z "${BASE:-}" ]; then
    if "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        BASE=$LOCAL_BASE
    elif "$ENGINE" image inspect "$PUBLIC_BASE" >/dev/null 2>&1 || timeout 60 "$ENGINE" pull "$PUBLIC_BASE" >/dev/null 2>&1; then
        BASE=$PUBLIC_BASE
    elif command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "build-image.sh: $PUBLIC_BASE cannot be pulled here; building $LOCAL_BASE from Debian packages"
        ENGINE=$ENGINE deploy/container/make-base.sh "$LOCAL_BASE"
        BASE=$LOCAL_BASE
    else
        echo "build-image.sh: $PUBLIC_BASE cannot be pulled and there is no $LOCAL_BASE (make base-image)" >&2
        exit 1
    fi
fi
args+=(--build-arg "BASE=$BASE")

if [ "$VARIANT" = kserve ]; then
    # The KServe variant is the serving image plus a layer: build that first, on the same base.
    IMAGE=$SERVING_IMAGE VARIANT=serving BASE=$BASE DEVICE=$DEVICE ENGINE=$ENGINE "$SELF"
    args+=(--build-arg "SERVING_IMAGE=$SERVING_IMAGE")
fi

# This machine's local pip folders, if any (podman only: docker build has no build-time volumes).
if [ "$ENGINE" = podman ] && command -v python3 >/dev/null; then
    while read -r kind value; do
        case $kind in
            mount) args+=(--volume "$value:$value:ro") ;;
            arg) args+=(--build-arg "$value") ;;
        esac
    done < <(python3 - <<'EOF'
import os, shlex, subprocess

try:
    listing = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
except (OSError, subprocess.CalledProcessError):
    listing = ""
config = {}
for line in listing.splitlines():
    key, _, value = line.partition("=")
    config[key.split(".", 1)[-1]] = " ".join(shlex.split(value))  # the last (env, user) wins
def local(url):
    path = url[len("file://"):] if url.startswith("file://") else url
    return path if path.startswith("/") and os.path.exists(path) else None
indexes = [u for u in config.get("extra-index-url", "").split() + config.get("index-url", "").split() if local(u)]
links = [u for u in config.get("find-links", "").split() if local(u)]
mounts = set()
for url in indexes + links:
    path = local(url).rstrip("/")
    # A simple index links to ../../files: mount the folder that holds `simple/`.
    mounts.add(os.path.dirname(path) if os.path.basename(path) == "simple" else path)
for path in sorted(mounts):
    print(f"mount {path}")
if indexes:
    print(f"arg EXTRA_INDEX_URLS={' '.join(indexes)}")
if indexes or links:
    print("arg TORCH_INDEX_URL=")  # torch from these folders, as for this machine's .venv
if links:
    print(f"arg FIND_LINKS={' '.join(local(u) for u in links)}")
cert = config.get("cert")
if (indexes or links) and cert and os.path.isfile(cert):
    print(f"mount {cert}")
    print(f"arg CA_BUNDLE={cert}")
EOF
    )
    args+=(--network host)  # PyPI through this machine's network setup
fi

# shellcheck disable=SC2206
args+=(${BUILD_ARGS:-})
echo "$ENGINE build ${args[*]} ."
started=$(date +%s)
"$ENGINE" build "${args[@]}" .
echo "built $IMAGE from $BASE in $(($(date +%s) - started)) s"
"$ENGINE" image ls "$IMAGE"
