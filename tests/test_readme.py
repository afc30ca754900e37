"""The README's settings table names every COPYTRADE_* variable some service reads."""

from __future__ import annotations

import re

import msgspec

from shared.config import MasterSettings, OperatorSettings
from tests.harness import ROOT


def test_readme_lists_every_setting_of_every_service() -> None:
    fields = {f.name for kind in (OperatorSettings, MasterSettings) for f in msgspec.structs.fields(kind)}
    text = (ROOT / "README.md").read_text()
    listed = {m.lower() for m in re.findall(r"`COPYTRADE_([A-Z_]+)`", text)}

    assert fields - listed == set()
