"""`/v1/files`: uploads, listings, downloads and deletion of the shim's files."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from batch_pipeline.api.dependencies import Service
from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.files import upload_expiry
from batch_pipeline.api.models import FileDeleted, FileList, FileObject
from batch_pipeline.core.storage import atomic_path

router = APIRouter(prefix="/v1/files")

_COPY_BLOCK = 1 << 20


def _download(handle: BinaryIO, filename: str) -> StreamingResponse:
    """The bytes of a file already open: retention may delete its path before the response is sent."""
    quoted = quote(filename)
    disposition = f'attachment; filename="{filename}"' if quoted == filename else \
        f"attachment; filename*=utf-8''{quoted}"

    def blocks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(_COPY_BLOCK):
                yield block

    return StreamingResponse(blocks(), media_type="application/jsonl", headers={
        "content-length": str(os.fstat(handle.fileno()).st_size), "content-disposition": disposition})


def _store_upload(upload: UploadFile, target: Path, limit: int) -> None:
    """Atomic, so an upload that is refused or fails (e.g. the disk fills up) leaves no file behind."""
    size = 0
    with atomic_path(target) as temp, temp.open("wb") as out:
        while block := upload.file.read(_COPY_BLOCK):
            size += len(block)
            if size > limit:
                raise ShimError(413, f"File is larger than the limit of {limit} bytes", param="file",
                                code="file_too_large")
            out.write(block)


@router.post("", response_model=FileObject)
def upload_file(service: Service, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
                expires_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
                expires_seconds: Annotated[str | None, Form(alias="expires_after[seconds]")] = None):
    if purpose != "batch":
        raise ShimError(400, f"Unsupported purpose '{purpose}': this server accepts 'batch'", param="purpose",
                        code="invalid_purpose")
    expires_after = upload_expiry(expires_anchor, expires_seconds)
    if expires_after is None:
        expires_after = service.upload_expiry_seconds  # OpenAI's batch files expire after 30 days by default
    file_id, path = service.files.new_upload_path()
    _store_upload(file, path, service.max_upload_bytes)
    try:
        # The client's name is metadata only; the bytes live under our own id.
        return service.files.add(file_id, path, Path(file.filename or "upload.jsonl").name[:255] or "upload.jsonl",
                                purpose, expires_after_seconds=expires_after)
    except BaseException:
        path.unlink(missing_ok=True)  # bytes no record points to would never be deleted
        raise


@router.get("", response_model=FileList)
def list_files(service: Service, purpose: str | None = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               after: str | None = None, order: Literal["asc", "desc"] = "desc"):
    page = service.files.page(purpose, limit + 1, after, newest_first=order == "desc")
    data = page[:limit]
    return FileList(data=data, has_more=len(page) > limit, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(service: Service, file_id: str):
    return service.files.get(file_id)[0]


@router.get("/{file_id}/content", responses={200: {"content": {"application/jsonl": {}}}})
def file_content(service: Service, file_id: str):
    file, path = service.files.get(file_id)
    try:  # once open, the bytes stay readable even if retention deletes the file meanwhile
        handle = path.open("rb")
    except FileNotFoundError:
        raise ShimError(404, f"No such File object: {file_id}", param="id", code="file_not_found") from None
    return _download(handle, file.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(service: Service, file_id: str):
    service.files.delete(file_id)
    return FileDeleted(id=file_id)
