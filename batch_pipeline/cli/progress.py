"""A batch's progress as one terminal line, from the counts the API reports."""

_WIDTH = 30


def progress_line(status: str, completed: int, failed: int, total: int, elapsed_s: float) -> str:
    """`[#########.....................]  30/100 requests (1 failed)  in_progress  12s`."""
    done = completed + failed
    filled = round(_WIDTH * done / total) if total else 0
    failures = f" ({failed} failed)" if failed else ""
    counts = f"{done:>{len(str(total))}}/{total} requests{failures}" if total else "counting requests"
    return f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {counts}  {status}  {elapsed_s:.0f}s"
