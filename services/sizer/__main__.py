"""`python -m services.sizer`: the sizer service."""

from __future__ import annotations

import asyncio

from services.sizer.service import Sizer, SizerMetrics
from shared.config import Settings, load_settings
from shared.runtime import service_runtime


async def run(settings: Settings) -> None:
    async with service_runtime("sizer", settings) as rt:
        service = await Sizer(SizerMetrics(rt.registry)).start(rt.nc)
        await rt.wait_stopped()
        await service.stop()


def main() -> None:
    asyncio.run(run(load_settings()))


if __name__ == "__main__":
    main()
