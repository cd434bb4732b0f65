"""Where the shipped data lives: recipes/, templates/ and datasets/.

In a wheel they are packed inside the package as `minicpm_recipes/_data/<name>`; in a source checkout or an
editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `name` (recipes, templates or datasets) of this installation."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"minicpm-recipes is installed without its {name}/ folder (looked in {_PACKAGE_DIR / '_data'} and "
        f"{_PACKAGE_DIR.parent}); reinstall the package"
    )


def recipes_dir() -> Path:
    return data_dir("recipes")


def templates_dir() -> Path:
    return data_dir("templates")


def datasets_dir() -> Path:
    return data_dir("datasets")
