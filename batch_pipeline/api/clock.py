"""The shim's notion of now, in whole seconds as OpenAI's timestamps are: one place for tests to move."""

import time


def now() -> int:
    return int(time.time())
