"""Our own loggers' level and format (`BATCH_PIPELINE_LOG_LEVEL`, `BATCH_PIPELINE_LOG_FORMAT`)."""

import json
import logging
import sys

from batch_pipeline.core.settings import LogFormat, LogLevel


class JsonLines(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: LogLevel, log_format: LogFormat) -> None:
    """Our loggers at `level`; libraries' (alembic, httpx, ...) only from WARNING, whatever the level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("batch_pipeline").setLevel(level)
