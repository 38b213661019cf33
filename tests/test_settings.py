"""The shipped settings: secure defaults, server and per-model settings apart, docs that agree."""

from __future__ import annotations

import zipfile

import pytest
import yaml

from sentiment.ops import local_server
from sentiment.ops.archive import MODEL_YAML, build, serving_sources, write_model_yaml
from sentiment.ops.local_server import LocalServer
from sentiment.ops.properties import parse_properties
from sentiment.project import PROJECT_DIR
from sentiment.serving.config import config_table
from tests.tiny_models import write_model_dir

PROPERTIES = parse_properties((PROJECT_DIR / "config.properties").read_text())


def test_every_api_listens_on_loopback_only():
    for key in ("inference_address", "management_address", "metrics_address"):
        assert PROPERTIES[key].startswith("http://127.0.0.1:"), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert PROPERTIES[key] == "127.0.0.1", key


def test_token_auth_on_and_model_control_api_off_by_default():
    assert PROPERTIES["disable_token_authorization"] == "false"
    assert PROPERTIES["enable_model_api"] == "false"


def test_config_properties_holds_no_per_model_settings():
    assert "models" not in PROPERTIES


def test_workers_get_raw_bodies_for_the_handler_to_parse():
    assert PROPERTIES["decode_input_request"] == "false"


def test_per_model_settings_leave_the_worker_count_to_torchserve():
    settings = yaml.safe_load((PROJECT_DIR / MODEL_YAML).read_text())
    gpu = settings.pop("gpu")
    assert settings == {"batchSize": 8, "maxBatchDelay": 2, "responseTimeout": 20}
    assert set(gpu) <= {"batchSize", "maxBatchDelay", "responseTimeout"}


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_archive_packs_the_settings_of_its_device(tmp_path, device):
    source = yaml.safe_load((PROJECT_DIR / MODEL_YAML).read_text())
    written = yaml.safe_load(
        write_model_yaml(PROJECT_DIR / MODEL_YAML, tmp_path / "m.yaml", {"maxBatchDelay": 9}, device).read_text()
    )
    expected = {k: v for k, v in source.items() if k != "gpu"} | (source["gpu"] if device == "gpu" else {})
    assert written == expected | {"maxBatchDelay": 9}


def test_gpu_server_settings_apply_only_where_workers_see_gpus(tmp_path, monkeypatch):
    server = LocalServer(run_dir=tmp_path, model_store=tmp_path / "store")
    monkeypatch.setattr(local_server, "gpu_count", lambda: 0)
    assert server.gpu_settings() == {}
    on_cpu = parse_properties(server.render_properties())
    assert on_cpu["job_queue_size"] == PROPERTIES["job_queue_size"]
    assert on_cpu["vmargs"] == "-XX:TieredStopAtLevel=1"  # C1 only: C2 compiles on the workers' cores
    monkeypatch.setattr(local_server, "gpu_count", lambda: 2)
    per_gpu = int(parse_properties((PROJECT_DIR / "config.gpu.properties").read_text())["workers_per_gpu"])
    rendered = parse_properties(server.render_properties())
    assert rendered["default_workers_per_model"] == str(2 * per_gpu)
    assert "workers_per_gpu" not in rendered
    assert rendered["job_queue_size"] != PROPERTIES["job_queue_size"]
    assert rendered["vmargs"] == ""  # the JVM's default compilers (TorchServe adds no arguments for "")


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
    assert server.url("inference") == "http://127.0.0.1:1234"


def test_the_readme_table_of_config_keys_is_the_definition():
    readme = (PROJECT_DIR / "README.md").read_text()
    assert config_table() in readme, "run `make docs` to write the table into the README"


def test_the_archive_ships_the_serving_code_the_tests_import_and_its_settings(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "mine", tiny_bert_dir)
    archive = build(model_dir / "config.json", tmp_path / "store", torchserve_settings={"batchSize": 4})
    assert archive.name == "mine.mar"  # named after its folder: never overwrites the default model's
    package_root = PROJECT_DIR
    with zipfile.ZipFile(archive) as mar:
        for source in serving_sources():
            assert mar.read(str(source.relative_to(package_root))) == source.read_bytes()
        shipped = {name for name in mar.namelist() if name.endswith(".py")}
        settings = yaml.safe_load(mar.read("model-config.yaml"))
    expected = {str(s.relative_to(package_root)) for s in serving_sources()} | {"sentiment_handler.py"}
    assert shipped == expected  # nothing of ops, training or perf: the serving layer stands alone
    assert settings == {"batchSize": 4, "maxBatchDelay": 2, "responseTimeout": 20}


def test_a_model_config_yaml_beside_an_imported_config_json_is_its_own(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "mine", tiny_bert_dir)
    (model_dir / MODEL_YAML).write_text("batchSize: 16\nmaxBatchDelay: 5\nminWorkers: 1\n")
    archive = build(model_dir / "config.json", tmp_path / "store")
    with zipfile.ZipFile(archive) as mar:
        settings = yaml.safe_load(mar.read("model-config.yaml"))
    # maxWorkers follows a lone minWorkers: TorchServe ignores a worker count without it.
    assert settings == {"batchSize": 16, "maxBatchDelay": 5, "minWorkers": 1, "maxWorkers": 1}
