"""Image tags follow the build context: unchanged sources keep their tag, changes move it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.image_build import tags_by_image


def _containers(tmp_path: Path) -> Path:
    app = tmp_path / "containers" / "webui"
    (app / "easel_webui").mkdir(parents=True)
    (app / "Dockerfile").write_text("FROM public.ecr.aws/docker/library/busybox:1\n")
    (app / "easel_webui" / "app.py").write_text("app = None\n")
    return tmp_path / "containers"


def _tag(containers: Path) -> str:
    return tags_by_image(containers)["webui"]


def test_unchanged_source_keeps_its_tag(tmp_path):
    containers = _containers(tmp_path)
    assert _tag(containers) == _tag(containers)


def test_changed_source_gets_a_new_tag(tmp_path):
    containers = _containers(tmp_path)
    before = _tag(containers)
    (containers / "webui" / "easel_webui" / "app.py").write_text("app = 'changed'\n")
    assert _tag(containers) != before


def test_local_byproducts_do_not_change_the_tag(tmp_path):
    containers = _containers(tmp_path)
    before = _tag(containers)
    package = containers / "webui" / "easel_webui"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (containers / "webui" / "easel_webui.egg-info").mkdir()
    (containers / "webui" / "easel_webui.egg-info" / "PKG-INFO").write_text("x")
    assert _tag(containers) == before


def test_dockerignored_files_do_not_change_the_tag(tmp_path):
    containers = _containers(tmp_path)
    (containers / "webui" / ".dockerignore").write_text("# local notes\nnotes/\n")
    before = _tag(containers)
    (containers / "webui" / "notes").mkdir()
    (containers / "webui" / "notes" / "todo.txt").write_text("x")
    assert _tag(containers) == before


def test_folders_without_dockerfile_are_not_images(tmp_path):
    containers = _containers(tmp_path)
    (containers / "scratch").mkdir()
    assert set(tags_by_image(containers)) == {"webui"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compute_type": "LAMBDA_1GB"}, "compute_type LAMBDA_1GB"),
        ({"build_timeout_minutes": 600}, "build_timeout 600 minutes"),
        ({"dockerfile": False}, "no Dockerfile"),
    ],
)
def test_bad_props_are_named(tmp_path, kwargs, message):
    from aws_cdk import App, Duration, Stack
    from aws_cdk import aws_codebuild as codebuild
    from aws_cdk import aws_ecr as ecr

    from stacks.image_build import ImageBuild

    source = _containers(tmp_path) / "webui"
    if kwargs.get("dockerfile") is False:
        (source / "Dockerfile").unlink()
    stack = Stack(App(), "T")
    with pytest.raises(ValueError, match=message):
        ImageBuild(
            stack,
            "Image",
            repository=ecr.Repository(stack, "Repo"),
            source_dir=source,
            compute_type=getattr(codebuild.ComputeType, kwargs.get("compute_type", "LARGE")),
            build_timeout=Duration.minutes(kwargs.get("build_timeout_minutes", 30)),
        )


def _with_training(containers: Path, copy_line: str) -> Path:
    inference = containers / "inference"
    (inference / "easel_inference").mkdir(parents=True)
    (inference / "pyproject.toml").write_text("[project]\nname = 'easel-inference'\n")
    (inference / "easel_inference" / "__init__.py").write_text("")
    training = containers / "training"
    training.mkdir()
    (training / "Dockerfile").write_text(
        "FROM public.ecr.aws/docker/library/busybox:1 AS base\n"
        "COPY --from=base /bin/sh /tmp/sh\n"
        f"{copy_line}\n"
    )
    return training


def test_sibling_folder_copied_with_from_is_a_named_context(tmp_path):
    from stacks.image_build import named_contexts

    containers = _containers(tmp_path)
    training = _with_training(containers, "COPY --from=inference . /opt/easel/inference")
    assert named_contexts(training) == {"inference": containers / "inference"}


def test_named_context_changes_move_the_tag(tmp_path):
    containers = _containers(tmp_path)
    _with_training(containers, "COPY --from=inference . /opt/easel/inference")
    before = tags_by_image(containers)
    assert tags_by_image(containers) == before  # staged afresh each synth, same content
    (containers / "inference" / "easel_inference" / "__init__.py").write_text("X = 1\n")
    after = tags_by_image(containers)
    assert after["training"] != before["training"]
    assert after["webui"] == before["webui"]


def test_copy_from_an_unknown_name_is_an_error(tmp_path):
    from stacks.image_build import named_contexts

    training = _with_training(_containers(tmp_path), "COPY --from=nowhere . /x")
    with pytest.raises(ValueError, match="COPY --from=nowhere"):
        named_contexts(training)


def test_tags_command_prints_tags_and_contexts(tmp_path, capsys):
    from stacks.image_build import _main

    containers = _containers(tmp_path)
    _with_training(containers, "COPY --from=inference . /opt/easel/inference")
    assert _main(["tags", str(containers)]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    tags = tags_by_image(containers)
    assert lines["webui"] == tags["webui"]
    assert lines["training"] == f"{tags['training']} inference={containers / 'inference'}"
