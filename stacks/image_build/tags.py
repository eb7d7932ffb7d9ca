"""What each image is built from, and the content-hash tag that follows it.

All three images build from the one `containers/` context (`docker build -f <image>/Dockerfile
containers/`). An image's source is only what its Dockerfile copies: the paths of its COPY/ADD
instructions (read with dockerfile-parse) plus the Dockerfile itself. That set is the CodeBuild
source zip and the input of the image's tag, so editing the portal moves only the webui tag,
while editing `contracts/` (copied by every image) moves all three.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import posixpath
import shlex
from pathlib import Path

from aws_cdk import App, IgnoreMode, Stack
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct
from dockerfile_parse import DockerfileParser

from stacks.image_build.buildspec import BUILD_IMAGE, buildspec

CONTAINERS_DIR = Path(__file__).resolve().parents[2] / "containers"
TAG_LENGTH = 32

# Never part of an image's source (and so never part of its tag): local byproducts of tests and
# editable installs. `containers/.dockerignore` (what a local `docker build` honours) adds to them.
DEFAULT_EXCLUDES = (
    "**/__pycache__",
    "**/*.pyc",
    "**/*.egg-info",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.venv",
)


def dockerfile_of(containers_dir: Path, image: str) -> Path:
    return containers_dir / image / "Dockerfile"


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths (relative to `containers/`) the Dockerfile's COPY/ADD read.

    A COPY/ADD `--from=` another stage or image reads nothing from the context and is skipped.
    """
    # parsed from memory: setting `.content` on a path-backed parser rewrites the Dockerfile,
    # and two synths at once could leave it empty
    parser = DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))
    sources: list[str] = []
    for item in parser.structure:
        if item["instruction"] not in ("COPY", "ADD"):
            continue
        value = item["value"].strip()
        words = json.loads(value) if value.startswith("[") else shlex.split(value)
        if any(word.startswith("--from") for word in words):
            continue
        args = [word for word in words if not word.startswith("--")]
        if len(args) < 2:
            raise ValueError(f"{dockerfile}: {item['content'].strip()!r} names no source")
        sources.extend(args[:-1])
    return sources


def _checked(dockerfile: Path, containers_dir: Path, source: str) -> str:
    if source.startswith(("http://", "https://", "git@")):
        raise ValueError(f"{dockerfile}: ADD {source}: fetch remote files in a RUN step instead")
    path = posixpath.normpath(source)
    if path in (".", "") or path.startswith("../") or posixpath.isabs(source):
        raise ValueError(
            f"{dockerfile}: COPY {source}: copy named paths under containers/ "
            "(e.g. contracts/easel_contracts), not the whole context or paths outside it"
        )
    if not glob.glob(str(containers_dir / path)):
        raise ValueError(
            f"{dockerfile}: COPY {source}: no {containers_dir / path}; the build context is "
            f"containers/, so sources start with the folder name (e.g. {dockerfile.parent.name}/)"
        )
    return path


def context_paths(containers_dir: Path, image: str) -> list[str]:
    """The Dockerfile and everything it copies, relative to `containers_dir` (sorted, unique)."""
    dockerfile = dockerfile_of(containers_dir, image)
    if not dockerfile.is_file():
        raise ValueError(f"{dockerfile.parent}: no Dockerfile in it")
    paths = {f"{image}/Dockerfile"}
    paths.update(_checked(dockerfile, containers_dir, s) for s in copy_sources(dockerfile))
    return sorted(paths)


def _dockerignore(containers_dir: Path) -> list[str]:
    path = containers_dir / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def excludes(containers_dir: Path, image: str) -> list[str]:
    """Docker-ignore patterns that keep only the image's own paths (byproducts always out)."""
    keep = [f"!{path}" for path in context_paths(containers_dir, image)]
    return ["*", *keep, *DEFAULT_EXCLUDES, *_dockerignore(containers_dir)]


def source_asset(
    scope: Construct, construct_id: str, containers_dir: Path, image: str
) -> s3_assets.Asset:
    """The image's part of `containers/` as an S3 asset (zip), laid out as in the folder."""
    return s3_assets.Asset(
        scope,
        construct_id,
        path=str(containers_dir),
        exclude=excludes(containers_dir, image),
        ignore_mode=IgnoreMode.DOCKER,
    )


def image_tag_for(asset_hash: str) -> str:
    """The image tag for a source hash: changes when the source or the build recipe changes."""
    recipe = json.dumps(buildspec(), sort_keys=True) + BUILD_IMAGE.image_id
    return hashlib.sha256(f"{asset_hash}\n{recipe}".encode()).hexdigest()[:TAG_LENGTH]


def images_in(containers_dir: Path) -> list[str]:
    """The image names: folders of `containers_dir` that hold a Dockerfile."""
    return sorted(
        folder.name for folder in containers_dir.iterdir() if (folder / "Dockerfile").is_file()
    )


def tags_by_image(containers_dir: Path = CONTAINERS_DIR) -> dict[str, str]:
    """The tag `ImageBuild` gives each image of `containers_dir`."""
    stack = Stack(App(), "TagProbe")
    return {
        image: image_tag_for(source_asset(stack, image, containers_dir, image).asset_hash)
        for image in images_in(containers_dir)
    }
