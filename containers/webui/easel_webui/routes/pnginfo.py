"""PNG Info page: upload a PNG, see the settings it was made with, send them to txt2img."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from easel_contracts.invocations import MAX_IMAGE_BYTES
from easel_webui.access import Access, CurrentUser, Routes
from easel_webui.errors import PortalError
from easel_webui.pnginfo import read_png_info, txt2img_fields
from easel_webui.templating import render

routes = Routes()


@routes.get("/png-info", access=Access.USER)
def png_info_page(request: Request, user: CurrentUser) -> Response:
    return render(request, "png_info.html")


@routes.post("/png-info", access=Access.USER)
async def read_upload(request: Request, user: CurrentUser) -> Response:
    form = await request.form()
    upload = form.get("file")
    try:
        if not isinstance(upload, UploadFile):
            raise PortalError("file: choose a PNG file")
        data = await upload.read(MAX_IMAGE_BYTES + 1)
        result = read_png_info(data)
    except PortalError as exc:
        return render(request, "png_info.html", error=exc.message, status_code=exc.status_code)
    return render(request, "png_info.html", result=result, file_name=upload.filename or "",
                  send=txt2img_fields(result.parameters))
