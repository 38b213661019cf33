"""Where the project's files are: the default config, model store, data and reports live here."""

from __future__ import annotations

from pathlib import Path

# The package is installed editable from the project folder, so the folder is its parent.
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_DIR / "config.json"
MODEL_STORE = PROJECT_DIR / "model_store"
DATA_DIR = PROJECT_DIR / "data"
REPORTS_DIR = PROJECT_DIR / "reports"
# The default model's name: its archive is model_store/sentiment.mar, its URL /predictions/sentiment.
DEFAULT_MODEL = "sentiment"
# The MPNet teacher served beside it on request (`make large`): models/sentiment-large.
LARGE_MODEL = "sentiment-large"


def model_name_for(config_path: Path) -> str:
    """`sentiment` for the default model; any other model is named after its folder (models/mine: mine)."""
    folder = Path(config_path).resolve().parent
    return DEFAULT_MODEL if Path(config_path).resolve() == DEFAULT_CONFIG.resolve() else folder.name
