"""Container tests build and run the image (minutes): only when asked for.

They run with `pytest -m container` (`make image-test`), or when named on the command line
(`pytest tests/container`); plain `pytest`, `make test`, `make test-unit` (-m "not integration")
and `make test-integration` (-m integration) leave them out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.container.engine import find_engine

HERE = Path(__file__).resolve().parent


def asked_for(config) -> bool:
    if re.search(r"\bcontainer\b", config.getoption("markexpr") or ""):
        return True  # pytest's own -m filter then decides, `not container` included
    named = (Path(arg.split("::")[0]).resolve() for arg in config.args)
    return any(path == HERE or HERE in path.parents for path in named)


def pytest_collection_modifyitems(config, items):
    if asked_for(config):
        return
    left_out = [item for item in items if item.get_closest_marker("container")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("container")]


@pytest.fixture(scope="module")
def engine() -> str:
    path, why_not = find_engine()
    if not path:
        pytest.skip(f"no container engine works here: {why_not}")
    return path
