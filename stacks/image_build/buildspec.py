"""The CodeBuild recipe every image uses: one `containers/` context, `-f <image>/Dockerfile`."""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_codebuild as codebuild

# The tag CodeBuild pulls as a layer cache and moves to every new build.
CACHE_TAG = "latest"
BUILD_IMAGE = codebuild.LinuxBuildImage.STANDARD_7_0  # Ubuntu 22.04, x86_64, Docker


def buildspec() -> dict[str, Any]:
    """The CodeBuild buildspec every image uses (the single source for the tests too).

    Environment: REPOSITORY_URI, DOCKERFILE (`<image>/Dockerfile`, relative to the source root),
    CACHE_TAG, WAIT_HANDLE_URL (project); IMAGE_TAG (per build); CodeBuild sets
    AWS_DEFAULT_REGION, CODEBUILD_BUILD_ID and CODEBUILD_BUILD_SUCCEEDING. The source is
    the part of `containers/` that the image's Dockerfile copies, so the build context is the
    same one `docker build -f <image>/Dockerfile containers/` uses locally.
    """
    return {
        "version": "0.2",
        "env": {"shell": "bash", "variables": {"DOCKER_BUILDKIT": "1"}},
        "phases": {
            "pre_build": {
                "commands": [
                    'test -n "${IMAGE_TAG:-}" || { echo "IMAGE_TAG is not set" >&2; exit 1; }',
                    'test -f "${DOCKERFILE:-}" || { echo "no Dockerfile ${DOCKERFILE:-}" >&2;'
                    " exit 1; }",
                    'REGISTRY="${REPOSITORY_URI%%/*}"',
                    'aws ecr get-login-password --region "$AWS_DEFAULT_REGION"'
                    ' | docker login --username AWS --password-stdin "$REGISTRY"',
                    # Authenticated pulls from the public gallery get higher rate limits; anonymous
                    # pulls still work if this fails.
                    "aws ecr-public get-login-password --region us-east-1"
                    " | docker login --username AWS --password-stdin public.ecr.aws"
                    ' || echo "public.ecr.aws login failed; pulling base images anonymously"',
                    'docker pull "$REPOSITORY_URI:$CACHE_TAG"'
                    ' || echo "no cache image $REPOSITORY_URI:$CACHE_TAG yet; building cold"',
                ]
            },
            "build": {
                "commands": [
                    'docker build --file "$DOCKERFILE" --cache-from "$REPOSITORY_URI:$CACHE_TAG"'
                    " --build-arg BUILDKIT_INLINE_CACHE=1"
                    ' --label "org.opencontainers.image.version=$IMAGE_TAG"'
                    ' --tag "$REPOSITORY_URI:$IMAGE_TAG" --tag "$REPOSITORY_URI:$CACHE_TAG" .',
                    'docker push "$REPOSITORY_URI:$IMAGE_TAG"',
                    'docker push "$REPOSITORY_URI:$CACHE_TAG"',
                ]
            },
            # A pushed image signals its wait condition at once (a presigned URL: PUT with an
            # empty Content-Type). The build-finished event signals too, with the same UniqueId,
            # and alone reports failures (with the failed phase and log link), so a failed curl
            # only logs.
            "post_build": {
                "commands": [
                    'if [ "${CODEBUILD_BUILD_SUCCEEDING:-0}" = 1 ]'
                    ' && [ -n "${WAIT_HANDLE_URL:-}" ]; then'
                    ' curl --silent --show-error --fail --retry 3 --request PUT'
                    ' --header "Content-Type:" --data-binary "{\\"Status\\": \\"SUCCESS\\",'
                    ' \\"Reason\\": \\"pushed $IMAGE_TAG\\",'
                    ' \\"UniqueId\\": \\"${CODEBUILD_BUILD_ID##*:}\\",'
                    ' \\"Data\\": \\"$IMAGE_TAG\\"}" "$WAIT_HANDLE_URL"'
                    ' || echo "could not signal the wait condition; the build-finished event will";'
                    " fi",
                ]
            },
        },
    }
