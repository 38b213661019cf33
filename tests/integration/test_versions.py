"""Two versions of one model on one server: traffic per version, set-default, rollback, removal.

The model API (registering) is on only for this test's own server, never by default.
"""

from __future__ import annotations

import re
import shutil

import pytest
import requests

from sentiment.ops.archive import build
from sentiment.ops.local_server import LocalServer
from sentiment.ops.management import ManagementError
from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.config import ModelConfig

TEXT = "The battery life is fine but the screen is dim."


@pytest.fixture()
def versioned_server(tmp_path, default_archive):
    """The default model (1.0, int8) served with the model API on, and a 2.0 archive beside it that
    runs in fp32, so that its probabilities tell which version answered."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(default_archive / "sentiment.mar", store / "sentiment.mar")
    folder = tmp_path / "v2"
    folder.mkdir()
    config = ModelConfig.from_file(DEFAULT_CONFIG).with_keys(MODEL_VERSION="2.0", PRECISION="fp32")
    build(config.write(folder / "config.json"), store, name="sentiment-v2")
    server = LocalServer.on_free_ports(tmp_path / "run", store, enable_model_api="true")
    server.start(timeout=180)
    yield server
    server.stop()


def predict(server: LocalServer, path: str) -> dict:
    response = requests.post(
        f"{server.url('inference')}/predictions/{path}", json={"text": TEXT}, headers=server.auth_header("inference")
    )
    assert response.status_code == 200, response.text
    return response.json()["probabilities"]


def test_a_second_version_takes_traffic_by_path_then_as_default_and_rolls_back(versioned_server):
    server, management = versioned_server, versioned_server.management
    v1 = predict(server, "sentiment/1.0")
    assert predict(server, "sentiment") == v1

    assert management.register("sentiment-v2.mar", "sentiment", workers=1) == "2.0"
    assert sorted(v["modelVersion"] for v in management.versions("sentiment")) == ["1.0", "2.0"]
    v2 = predict(server, "sentiment/2.0")
    assert v2 != v1, "fp32 and int8 should differ in the last digits"
    assert predict(server, "sentiment") == v1, "registering must not move the default"

    management.set_default("sentiment", "2.0")
    assert management.default_version("sentiment") == "2.0"
    assert predict(server, "sentiment") == v2

    management.set_default("sentiment", "1.0")  # the rollback
    assert predict(server, "sentiment") == v1
    refusal = re.escape("default version, which is never removed: `set-default 2.0` first")
    with pytest.raises(ManagementError, match=refusal):
        management.unregister("sentiment", "1.0")
    management.unregister("sentiment", "2.0")
    # The only version left: removing it would remove the model (TorchServe would, and answer 200).
    with pytest.raises(ManagementError, match="it is the only version"):
        management.unregister("sentiment", "1.0")
    with pytest.raises(ManagementError, match=re.escape("has no version '3.0': it has 1.0")):
        management.unregister("sentiment", "3.0")
    gone = requests.post(
        f"{server.url('inference')}/predictions/sentiment/2.0",
        json={"text": TEXT},
        headers=server.auth_header("inference"),
    )
    assert gone.status_code == 404
    assert predict(server, "sentiment") == v1


def test_registering_is_refused_while_the_model_api_is_off(server):
    with pytest.raises(ManagementError, match="MODEL_API=on"):
        server.management.register("sentiment.mar", "other")
