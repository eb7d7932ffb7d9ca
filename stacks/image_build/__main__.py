"""`python -m stacks.image_build tags [CONTAINERS_DIR]`: one `<image> <tag>` line per image.

scripts/images_local.sh tags local builds with it, so they match what `cdk deploy` builds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stacks.image_build.tags import CONTAINERS_DIR, tags_by_image


def main(argv: list[str]) -> int:
    if argv[:1] != ["tags"] or len(argv) > 2:
        print("usage: python -m stacks.image_build tags [CONTAINERS_DIR]", file=sys.stderr)
        return 2
    directory = Path(argv[1]) if len(argv) > 1 else CONTAINERS_DIR
    try:
        tags = tags_by_image(directory)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, tag in tags.items():
        print(f"{name} {tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
