"""The shipped configuration: secure defaults, and config.json and config.properties agreeing."""

from __future__ import annotations

import json
from pathlib import Path

from sentiment_model import ModelConfig
from server import LocalServer, parse_properties

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = parse_properties((ROOT / "config.properties").read_text())


def test_every_api_listens_on_loopback_only():
    for key in ("inference_address", "management_address", "metrics_address"):
        assert PROPERTIES[key].startswith("http://127.0.0.1:"), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert PROPERTIES[key] == "127.0.0.1", key


def test_token_auth_on_and_model_control_api_off_by_default():
    assert PROPERTIES["disable_token_authorization"] == "false"
    assert PROPERTIES["enable_model_api"] == "false"


def test_batching_settings_name_the_archive_version():
    config = ModelConfig.from_file(ROOT / "config.json")
    models = json.loads(PROPERTIES["models"])
    assert list(models["sentiment"]) == [config.model_version]
    assert models["sentiment"][config.model_version]["marName"] == "sentiment.mar"


def test_run_folder_copy_applies_overrides_and_model_store(tmp_path):
    server = LocalServer(
        run_dir=tmp_path,
        model_store=tmp_path / "store",
        overrides={"inference_address": "http://127.0.0.1:1234", "new_key": "x"},
    )
    rendered = parse_properties(server.render_properties())
    assert rendered["inference_address"] == "http://127.0.0.1:1234"
    assert rendered["model_store"] == str((tmp_path / "store").resolve())
    assert rendered["new_key"] == "x"
    assert rendered["management_address"] == PROPERTIES["management_address"]


def test_workers_default_to_one_per_core_unless_set():
    from server import with_default_workers

    models = json.loads(with_default_workers(PROPERTIES["models"], workers=3))
    version = ModelConfig.from_file(ROOT / "config.json").model_version
    assert models["sentiment"][version]["minWorkers"] == 3
    pinned = json.dumps({"sentiment": {"1.0": {"minWorkers": 1, "maxWorkers": 1}}})
    assert json.loads(with_default_workers(pinned, workers=3))["sentiment"]["1.0"]["minWorkers"] == 1


def test_one_thread_per_worker_so_workers_do_not_oversubscribe_the_cores():
    assert ModelConfig.from_file(ROOT / "config.json").threads == 1
