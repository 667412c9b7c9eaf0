"""The several-repositories documentation against the code: every key of a
`[[repository]]` entry is in docs/configuration.md's table, and every TOML block of the
"Several repositories" section and of docs/recipes.md loads as a configuration, with
the meaning the text gives it (which repository is optional, whose keys and policy)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from pitrkit import config
from pitrkit.config import RepositoryConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
_TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.DOTALL)


def section(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def loaded(text: str) -> list[config.Config]:
    return [config.parse(tomllib.loads(block), "docs") for block in _TOML_BLOCK.findall(text)]


def test_every_key_of_an_entry_is_in_the_table():
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section("configuration.md", "## Several repositories"),
                                re.MULTILINE))
    assert documented == {field.name for field in msgspec.structs.fields(RepositoryConfig)}


def test_the_configuration_pages_example_is_a_required_local_and_an_optional_cloud_with_its_own_keys():
    [example] = loaded(section("configuration.md", "## Several repositories"))
    local, cloud = example.repositories
    assert (local.name, local.required, cloud.name, cloud.required) == ("local", True, "cloud", False)
    assert example.for_repository(cloud).encryption.key_file == "/etc/pitrkit/cloud.key"
    assert example.for_repository(cloud).retention.window == "30d"


def test_the_recipes_configuration_loads_with_each_repositorys_policy():
    [recipe] = loaded((DOCS / "recipes.md").read_text())
    local, cloud = recipe.repositories
    assert (local.required, cloud.required, cloud.spool_max_bytes) == (True, False, 16 * 1024**3)
    assert recipe.for_repository(local).encryption.mode == "off"
    assert recipe.for_repository(cloud).encryption.mode == "key"
    assert (recipe.for_repository(local).retention.window, recipe.for_repository(cloud).retention.window) == (
        "7d", "30d")


def test_the_readme_links_the_recipes():
    assert "docs/recipes.md" in (DOCS.parent / "README.md").read_text()
