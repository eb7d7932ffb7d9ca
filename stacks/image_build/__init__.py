"""Building the three container images in the account during `cdk deploy`.

- `tags`: what each image is built from (its Dockerfile's COPY sources under `containers/`) and
  the content-hash tag that follows it;
- `buildspec`: the CodeBuild recipe (`docker build -f <image>/Dockerfile` on that source);
- `waiter`: the stack's one start/report handler and the build-finished signaller, and the wait
  timing (CloudFormation's 1-hour custom-resource and 12-hour wait-condition limits);
- `construct`: `ImageBuild`, one image; `handler/`: the Lambda code beside it.
"""

from stacks.image_build.construct import ImageBuild
from stacks.image_build.tags import CONTAINERS_DIR, tags_by_image

__all__ = ["CONTAINERS_DIR", "ImageBuild", "tags_by_image"]
