"""Where the project's files are: the default config, model store, data and reports live here."""

from __future__ import annotations

from pathlib import Path

# The package is installed editable from the project folder, so the folder is its parent.
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_DIR / "config.json"
MODEL_STORE = PROJECT_DIR / "model_store"
DATA_DIR = PROJECT_DIR / "data"
REPORTS_DIR = PROJECT_DIR / "reports"
