"""A started emulator answers its first requests without importing anything.

pyarrow's first conversion of Python values imports pandas when pandas is installed (0.24 to
0.35 s here). The emulator's OpenAPI document (its example rows) and its invocations convert
values, so the first of them used to pay that import, inside the start-up of whichever client
a benchmark timed against a fresh emulator. It is paid before the planes listen instead.
Checked in a fresh interpreter, by the modules loaded while requests are answered (no clock).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, urllib.request
import engine
from engine.emulator import EmulatorConfig, EmulatorThread, EndpointConfig

config = EmulatorConfig(endpoints=(EndpointConfig(name="demo-text", route_optimized=False),))
with EmulatorThread(config) as emu:
    before = set(sys.modules)
    form = (
        f"grant_type=client_credentials&client_id={emu.client_id}"
        f"&client_secret={emu.client_secret}&scope=all-apis"
    ).encode()
    with urllib.request.urlopen(urllib.request.Request(emu.host + "/oidc/v1/token", form)) as r:
        token = json.loads(r.read())["access_token"]
    auth = {"Authorization": "Bearer " + token}
    api = emu.host + "/api/2.0/serving-endpoints/demo-text"
    urllib.request.urlopen(urllib.request.Request(api + "/openapi", headers=auth)).read()
    body = json.dumps({"dataframe_split": {"columns": ["text", "boost"], "data": [["a b", 1]]}})
    url = emu.host + "/serving-endpoints/demo-text/invocations"
    request = urllib.request.Request(
        url, body.encode(), {**auth, "Content-Type": "application/json"}
    )
    urllib.request.urlopen(request).read()
    print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_first_openapi_document_and_invocation_import_nothing() -> None:
    pytest.importorskip("pandas")  # without pandas there is no import to pay
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [name for name in loaded if name.split(".")[0] == "pandas"], loaded
