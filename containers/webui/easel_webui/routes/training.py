"""Training page: submit a job on a concepts path, follow it, publish or deploy the result."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response

from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.errors import NotFound, PortalError
from easel_webui.routes.common import blocking, form_dict, redirect
from easel_webui.templating import render
from easel_webui.training import BASIC_FIELDS, form_fields

routes = Routes()


def _training_page(request: Request, portal: Any, user: Any, **refused: Any) -> Response:
    sets = portal.bucket.concept_sets(None if user.is_admin else user.username)
    return render(
        request, "training.html", jobs=portal.training.jobs(user=user),
        models=portal.bucket.models(), sets=sets,
        instance_types=portal.settings.training_instance_types, settings=portal.settings,
        hyperparameter_fields=form_fields(), basic_fields=BASIC_FIELDS,
        **refused,
    )


@routes.get("/training", access=Access.USER)
def training_page(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    return _training_page(request, portal, user)


@routes.post("/training", access=Access.USER)
async def submit(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    form = await form_dict(request)
    try:
        spec = await blocking(portal.training.spec_from_form, form, user=user)
        job = await blocking(portal.training.submit, spec)
    except PortalError as exc:
        # the page again, with the error and every field as submitted
        return await blocking(_training_page, request, portal, user, form=form,
                              error=exc.message, status_code=exc.status_code)
    return redirect(f"/training/{job}", notice=f"Training job {job} submitted.")


def _job_page(request: Request, job: str, portal: Any, user: Any, **refused: Any) -> Response:
    detail = portal.training.job(job, user=user)
    usable = []
    if detail.get("published_lora"):
        usable = [e["endpoint"] for e in portal.endpoints.listing()
                  if e.get("model_s3_uri") == detail.get("model_s3_uri")]
    deploy_link = "/endpoints?model=" + quote(detail["result_uri"], safe="")
    return render(request, "training_job.html", job=detail, usable_endpoints=usable,
                  deploy_link=deploy_link, **refused)


@routes.get("/training/{job}", access=Access.USER)
def job_page(request: Request, job: str, portal: PortalDep, user: CurrentUser) -> Response:
    return _job_page(request, job, portal, user)


@routes.get("/training/{job}/status", access=Access.USER)
def job_status(job: str, portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    detail = portal.training.job(job, user=user)
    return {k: detail.get(k) for k in ("job", "status", "secondary_status", "failure",
                                       "progress", "progress_problem", "percent", "phase_label",
                                       "previews", "published_lora")}


@routes.post("/training/{job}/stop", access=Access.USER)
def stop(job: str, portal: PortalDep, user: CurrentUser) -> Response:
    try:
        portal.training.stop(job, user=user)
    except PortalError as exc:
        return redirect(f"/training/{job}", error=exc.message)
    return redirect(f"/training/{job}", notice="Stopping; the last checkpoint is kept.")


@routes.post("/training/{job}/publish", access=Access.USER)
def publish(job: str, portal: PortalDep, user: CurrentUser) -> Response:
    try:
        name = portal.training.publish_lora(job, user=user)
    except PortalError as exc:
        return redirect(f"/training/{job}", error=exc.message)
    return redirect(f"/training/{job}",
                    notice=f"Published: use <lora:{name}:0.8> in a prompt.")


@routes.post("/training/{job}/publish-checkpoint", access=Access.USER)
def publish_checkpoint(request: Request, job: str, portal: PortalDep,
                       user: CurrentUser) -> Response:
    """A stopped or failed lora job's last checkpoint into the LoRA library; a refusal is the
    job page again with the reason (and its 4xx status)."""
    try:
        name, step = portal.training.publish_checkpoint(job, user=user)
    except NotFound:
        raise
    except PortalError as exc:
        return _job_page(request, job, portal, user, error=exc.message,
                         status_code=exc.status_code)
    return redirect(f"/training/{job}", notice=f"Published the checkpoint at step {step}: use "
                    f"<lora:{name}:0.8> in a prompt.")


@routes.post("/training/{job}/resume", access=Access.USER)
async def resume(request: Request, job: str, portal: PortalDep, user: CurrentUser) -> Response:
    """A stopped job goes on from its last checkpoint as a new job (the name from the form)."""
    form = await form_dict(request)
    try:
        new_job = await blocking(portal.training.resume, job, user=user,
                                 name=str(form.get("name") or "").strip())
    except PortalError as exc:
        return redirect(f"/training/{job}", error=exc.message)
    return redirect(f"/training/{new_job}",
                    notice=f"Resuming {job} from its last checkpoint as {new_job}.")
