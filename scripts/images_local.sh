#!/usr/bin/env bash
# Build Easel's container images with a local Docker (`make images-local`), tagged exactly as
# `cdk deploy` tags them (stacks/image_build: a hash of what the Dockerfile copies and the build
# recipe). Every image builds from the one containers/ context: docker build -f <image>/Dockerfile.
#
#   scripts/images_local.sh [--push] [IMAGE ...]     IMAGE: inference, training, webui (default: all)
#
# Without --push the images stay local as easel-<image>:<tag> (and :latest).
# With --push they also go to the deployment's ECR repositories, <registry>/<repository>:<tag>;
# the next `cdk deploy` then finds each tag in ECR and skips its CodeBuild build. Settings:
#   EASEL_REGISTRY          <account>.dkr.ecr.<region>.amazonaws.com (default: from `aws sts`)
#   EASEL_REPOSITORY_PREFIX repository name prefix (default: easel-, the default deployment_id)
#   AWS_REGION              region of the registry when EASEL_REGISTRY is not set
#   EASEL_CONTAINERS_DIR    where the image folders are (default: containers/)
# Not needed to deploy: `cdk deploy` builds the images in your account without Docker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CONTAINERS="${EASEL_CONTAINERS_DIR:-$ROOT/containers}"
[[ -x "$PYTHON" ]] || PYTHON=python3
PUSH=0
IMAGES=""  # a plain list (bash 3.2 on macOS has no associative arrays)
for arg in "$@"; do
  case "$arg" in
    --push) PUSH=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option: $arg" >&2; exit 2 ;;
    *) IMAGES="$IMAGES $arg" ;;
  esac
done

for name in $IMAGES; do
  [[ -f "$CONTAINERS/$name/Dockerfile" ]] \
    || { echo "no image '$name' (containers/$name/Dockerfile)" >&2; exit 2; }
done
command -v docker >/dev/null || { echo "docker is not installed (cdk deploy does not need it)" >&2; exit 1; }

# "name tag" lines, computed by the same code the CDK construct uses.
TAG_LINES="$(cd "$ROOT" && "$PYTHON" -m stacks.image_build tags "$CONTAINERS")"
[[ -n "$IMAGES" ]] || IMAGES="$(awk '{print $1}' <<<"$TAG_LINES")"

if [[ $PUSH -eq 1 ]]; then
  region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
  if [[ -z "${EASEL_REGISTRY:-}" ]]; then
    [[ -n "$region" ]] || { echo "set AWS_REGION or EASEL_REGISTRY to push" >&2; exit 2; }
    account="$(aws sts get-caller-identity --query Account --output text)"
    EASEL_REGISTRY="$account.dkr.ecr.$region.amazonaws.com"
  fi
  region="${region:-$(cut -d. -f4 <<<"$EASEL_REGISTRY")}"
  aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$EASEL_REGISTRY"
fi

for name in $IMAGES; do
  line="$(awk -v n="$name" '$1 == n' <<<"$TAG_LINES")"
  tag="$(awk '{print $2}' <<<"$line")"
  echo "==> building $name ($tag)"
  # x86_64 like CodeBuild and SageMaker (emulated on ARM); one context: containers/.
  docker build --platform linux/amd64 --file "$CONTAINERS/$name/Dockerfile" \
    --tag "easel-$name:$tag" --tag "easel-$name:latest" "$CONTAINERS"
  if [[ $PUSH -eq 1 ]]; then
    uri="$EASEL_REGISTRY/${EASEL_REPOSITORY_PREFIX:-${EASEL_DEPLOYMENT_ID:-easel}-}$name"
    docker tag "easel-$name:$tag" "$uri:$tag"
    docker tag "easel-$name:$tag" "$uri:latest"
    docker push "$uri:$tag"
    docker push "$uri:latest"
  fi
done
