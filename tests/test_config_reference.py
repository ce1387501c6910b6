"""The configuration reference page is generated from the config classes and kept current."""

from tools import config_reference


def test_the_committed_reference_is_what_the_generator_writes():
    assert config_reference.PAGE.read_text() == config_reference.render(), (
        "docs/reference/config.md is out of date: run python -m tools.config_reference"
    )


def test_every_field_of_every_plugin_option_is_listed_with_a_description():
    text = config_reference.render()
    for group in config_reference.PLUGIN_GROUPS:
        for path in (config_reference.ROOT / "configs" / group).glob("*.yaml"):
            assert f"### `{group}={path.stem}`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows
    undescribed = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not undescribed, undescribed


def test_yaml_values_replace_class_defaults():
    text = config_reference.render()
    dora = text.split("### `method=dora`")[1].split("###")[0]
    assert "| `use_dora` | `bool` | `true` |" in dora
