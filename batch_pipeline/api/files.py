"""The shim's files: uploads kept under our own ids, visible until they expire, deleted only when unused."""

from pathlib import Path

from pydantic import ValidationError

from batch_pipeline.api import clock
from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.models import ExpiresAfter, FileObject
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.storage import remove_temp_files
from batch_pipeline.protocol.batch import new_id

# A temp file no replica has written to for this long belongs to a write that died.
_SHARED_LEFTOVER_SECONDS = 3600


def upload_expiry(anchor: str | None, seconds: str | None) -> int | None:
    """`expires_after` of an upload, sent as the form fields `expires_after[anchor]` and
    `expires_after[seconds]` (how the openai client encodes it): its seconds, or None when absent."""
    if anchor is None and seconds is None:
        return None
    try:
        return ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds}).seconds
    except ValidationError as exc:
        first = exc.errors()[0]
        param = "expires_after." + ".".join(str(part) for part in first["loc"])
        raise ShimError(400, f"Invalid '{param}': {first['msg']}", param=param, code="invalid_value") from None


def no_such_file(file_id: str) -> ShimError:
    return ShimError(404, f"No such File object: {file_id}", param="id", code="file_not_found")



class FileService:
    def __init__(self, layout: DataLayout, store: ShimStore, shared: bool):
        """`shared`: the folder is shared by API replicas (the store in PostgreSQL)."""
        self.store = store
        self.folder = layout.shim_files
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_write_leftovers(shared)

    def _remove_write_leftovers(self, shared: bool) -> None:
        """Temp files of atomic writes a crash left behind: none of them was ever handed out. A `shared`
        folder (API replicas) may hold another replica's upload in progress: only long-untouched ones go."""
        remove_temp_files(self.folder, untouched_seconds=_SHARED_LEFTOVER_SECONDS if shared else 0)

    def new_upload_path(self) -> tuple[str, Path]:
        file_id = new_id("file-")
        return file_id, self.folder / f"{file_id}.jsonl"

    def add(self, file_id: str, path: Path, filename: str, purpose: str,
            expires_after_seconds: int | None = None) -> FileObject:
        now = clock.now()
        expires_at = now + expires_after_seconds if expires_after_seconds is not None else None
        file = FileObject(id=file_id, bytes=path.stat().st_size, created_at=now, filename=filename,
                          purpose=purpose, expires_at=expires_at)
        self.store.put_file(file, path)
        return file

    def get(self, file_id: str) -> tuple[FileObject, Path]:
        """An expired file is gone from the moment it expires, whether or not retention has deleted it yet."""
        found = self.store.file(file_id)
        if found is None or (found[0].expires_at is not None and clock.now() >= found[0].expires_at):
            raise no_such_file(file_id)
        return found

    def page(self, purpose: str | None, limit: int, after: str | None, newest_first: bool) -> list[FileObject]:
        return self.store.files(purpose, limit, after, now=clock.now(), newest_first=newest_first)

    def delete(self, file_id: str) -> None:
        _, path = self.get(file_id)
        if not self.store.delete_unused_file(file_id):
            raise ShimError(409, f"File {file_id} is used by a batch that has not finished", param="file_id",
                            code="file_in_use")
        path.unlink(missing_ok=True)

