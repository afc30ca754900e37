"""`python -m services.sizer`: the sizer service."""

from __future__ import annotations

from services.sizer.service import Sizer, SizerMetrics
from shared.config import SizerSettings, load_settings
from shared.runtime import run_main, service_runtime


async def run(settings: SizerSettings) -> None:
    async with service_runtime("sizer", settings) as rt:
        service = await Sizer(SizerMetrics(rt.registry)).start(rt.nc)
        rt.mark_started()
        await rt.wait_stopped()
        await service.stop()


def main() -> None:
    run_main(run(load_settings(SizerSettings)))


if __name__ == "__main__":
    main()
