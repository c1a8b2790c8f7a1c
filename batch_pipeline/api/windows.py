"""Completion windows: OpenAI accepts only "24h"; "1h" and "7d" are ours."""

COMPLETION_WINDOWS = {"1h": 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
_DAY = COMPLETION_WINDOWS["24h"]


def window_seconds(window: str, day_seconds: int) -> int:
    """`day_seconds`: how long "24h" really is here (shortened in tests); other windows scale with it."""
    return COMPLETION_WINDOWS[window] * day_seconds // _DAY
