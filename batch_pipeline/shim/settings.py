import os

from pydantic import BaseModel

from batch_pipeline.settings import data_dir


class ShimSettings(BaseModel):
    data_dir: str
    host: str = "127.0.0.1"
    port: int = 4080
    api_key: str | None = None
    max_upload_bytes: int = 200 * 1024 * 1024
    # OpenAI accepts only "24h"; the real window is configurable so expiry can be exercised.
    completion_window_seconds: int = 24 * 3600
    refresh_interval_seconds: float = 2.0

    @classmethod
    def from_env(cls) -> "ShimSettings":
        env = os.environ
        return cls(
            data_dir=str(data_dir()),
            host=env.get("BATCH_PIPELINE_SHIM_HOST", "127.0.0.1"),
            port=int(env.get("BATCH_PIPELINE_SHIM_PORT", 4080)),
            api_key=env.get("BATCH_PIPELINE_SHIM_API_KEY") or None,
            max_upload_bytes=int(env.get("BATCH_PIPELINE_MAX_BYTES", 200 * 1024 * 1024)),
            completion_window_seconds=int(env.get("BATCH_PIPELINE_SHIM_COMPLETION_WINDOW_SECONDS", 24 * 3600)),
        )
