"""Image sources and tags: each image is what its Dockerfile copies from the one containers/
context, and its tag moves only when one of those paths (or the recipe) changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.image_build.tags import context_paths, copy_sources, tags_by_image

BASE = "FROM public.ecr.aws/docker/library/busybox:1\n"


def _containers(tmp_path: Path) -> Path:
    """A small containers/ folder shaped like the real one: contracts plus three images."""
    root = tmp_path / "containers"
    files = {
        "contracts/pyproject.toml": "[project]\nname = 'easel-contracts'\n",
        "contracts/easel_contracts/__init__.py": "",
        "inference/pyproject.toml": "[project]\nname = 'easel-inference'\n",
        "inference/easel_inference/__init__.py": "",
        "training/easel_training/__init__.py": "",
        "webui/easel_webui/app.py": "app = None\n",
        "inference/Dockerfile": BASE
        + "COPY contracts/pyproject.toml contracts/easel_contracts /opt/contracts/\n"
        + "COPY inference/pyproject.toml ./\nCOPY inference/easel_inference ./easel_inference\n",
        "training/Dockerfile": BASE
        + "COPY contracts/easel_contracts /opt/contracts/easel_contracts\n"
        + "COPY inference/easel_inference /opt/inference/easel_inference\n"
        + "COPY --chown=0:0 training/easel_training ./easel_training\n",
        "webui/Dockerfile": BASE
        + 'COPY ["contracts/easel_contracts", "/opt/contracts/easel_contracts"]\n'
        + "COPY webui/easel_webui ./easel_webui\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_unchanged_sources_keep_their_tags(tmp_path):
    containers = _containers(tmp_path)
    assert tags_by_image(containers) == tags_by_image(containers)


def test_editing_the_portal_moves_only_the_webui_tag(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    (containers / "webui" / "easel_webui" / "app.py").write_text("app = 'changed'\n")
    after = tags_by_image(containers)
    assert after["webui"] != before["webui"]
    assert after["inference"] == before["inference"]
    assert after["training"] == before["training"]


def test_editing_contracts_moves_all_three_tags(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    (containers / "contracts" / "easel_contracts" / "__init__.py").write_text("X = 1\n")
    after = tags_by_image(containers)
    assert all(after[name] != before[name] for name in ("inference", "training", "webui"))


def test_editing_inference_moves_training_too_but_not_webui(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    (containers / "inference" / "easel_inference" / "__init__.py").write_text("X = 1\n")
    after = tags_by_image(containers)
    assert after["inference"] != before["inference"]
    assert after["training"] != before["training"]
    assert after["webui"] == before["webui"]


def test_a_file_no_dockerfile_copies_changes_no_tag(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    (containers / "contracts" / "README.md").write_text("# notes\n")
    (containers / "webui" / "notes.txt").write_text("x")
    assert tags_by_image(containers) == before


def test_editing_a_dockerfile_moves_its_own_tag(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    dockerfile = containers / "webui" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "ENV X=1\n")
    after = tags_by_image(containers)
    assert after["webui"] != before["webui"]
    assert after["inference"] == before["inference"]


def test_local_byproducts_do_not_change_the_tag(tmp_path):
    containers = _containers(tmp_path)
    before = tags_by_image(containers)
    package = containers / "webui" / "easel_webui"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (containers / "contracts" / "easel_contracts.egg-info").mkdir()
    (containers / "contracts" / "easel_contracts.egg-info" / "PKG-INFO").write_text("x")
    assert tags_by_image(containers) == before


def test_dockerignored_files_do_not_change_the_tag(tmp_path):
    containers = _containers(tmp_path)
    (containers / ".dockerignore").write_text("# local notes\n**/notes/\n")
    before = tags_by_image(containers)
    (containers / "webui" / "easel_webui" / "notes").mkdir()
    (containers / "webui" / "easel_webui" / "notes" / "todo.txt").write_text("x")
    assert tags_by_image(containers) == before


def test_folders_without_dockerfile_are_not_images(tmp_path):
    containers = _containers(tmp_path)
    assert set(tags_by_image(containers)) == {"inference", "training", "webui"}


def test_copy_sources_skip_flags_and_other_stages(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM public.ecr.aws/docker/library/busybox:1 AS base\n"
        "FROM public.ecr.aws/docker/library/busybox:1\n"
        "COPY --from=base /bin/sh /tmp/sh\n"
        "COPY --chown=1:1 --chmod=644 a/x a/y /dst/\n"
        'ADD ["b/z", "/dst/z"]\n'
    )
    assert copy_sources(dockerfile) == ["a/x", "a/y", "b/z"]


def test_context_paths_are_the_dockerfile_and_its_sources(tmp_path):
    containers = _containers(tmp_path)
    assert context_paths(containers, "webui") == [
        "contracts/easel_contracts", "webui/Dockerfile", "webui/easel_webui"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY webui/missing ./", "COPY webui/missing: no "),
        ("COPY . /app", "not the whole context"),
        ("COPY ../secrets /x", "not the whole context or paths outside it"),
        ("ADD https://example.com/x /x", "fetch remote files in a RUN step"),
    ],
)
def test_bad_copy_sources_are_named(tmp_path, line, message):
    containers = _containers(tmp_path)
    (containers / "webui" / "Dockerfile").write_text(f"{BASE}{line}\n")
    with pytest.raises(ValueError, match=message):
        context_paths(containers, "webui")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compute_type": "LAMBDA_1GB"}, "compute_type LAMBDA_1GB"),
        ({"build_timeout_minutes": 600}, "build_timeout 600 minutes"),
        ({"build_timeout_minutes": 300, "builds": 3}, "outlast CloudFormation's 12-hour wait"),
        ({"image": "nowhere"}, "no Dockerfile"),
    ],
)
def test_bad_props_are_named(tmp_path, kwargs, message):
    from aws_cdk import App, Duration, Stack
    from aws_cdk import aws_codebuild as codebuild
    from aws_cdk import aws_ecr as ecr

    from stacks.image_build import ImageBuild

    containers = _containers(tmp_path)
    stack = Stack(App(), "T")
    with pytest.raises(ValueError, match=message):
        ImageBuild(
            stack,
            "Image",
            repository=ecr.Repository(stack, "Repo"),
            image=kwargs.get("image", "webui"),
            containers_dir=containers,
            compute_type=getattr(codebuild.ComputeType, kwargs.get("compute_type", "LARGE")),
            build_timeout=Duration.minutes(kwargs.get("build_timeout_minutes", 30)),
            builds=kwargs.get("builds", 1),
        )


def test_tags_command_prints_one_line_per_image(tmp_path, capsys):
    from stacks.image_build.__main__ import main

    containers = _containers(tmp_path)
    assert main(["tags", str(containers)]) == 0
    lines = dict(line.split(" ") for line in capsys.readouterr().out.splitlines())
    assert lines == tags_by_image(containers)


def test_tags_command_reports_a_bad_dockerfile_without_a_traceback(tmp_path, capsys):
    from stacks.image_build.__main__ import main

    containers = _containers(tmp_path)
    (containers / "webui" / "Dockerfile").write_text(f"{BASE}COPY webui/missing ./\n")
    assert main(["tags", str(containers)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "webui/missing" in err
    assert "Traceback" not in err
