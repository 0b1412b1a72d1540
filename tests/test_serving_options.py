"""`graft serve`'s settings and version-directory rule: refused clearly, without a model."""

import re
from dataclasses import fields

import pytest
from conftest import REPO

from graft.core.config import ConfigError
from graft.core.versions import INT64_MAX, version_number, why_not_a_version
from graft.serving.options import ServeOptions


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--port", "99999"], "--port 99999: must be 0..65535"),
        (["--rest-port", "70000"], "--rest-port 70000: must be 0..65535"),
        (["--max-message-mb", "5000"], "--max-message-mb 5000: must be 1..2047"),
        (["--rest-workers", "0"], "--rest-workers 0: must be at least 1"),
        (["--max-pixels", "400000000"], "decompression bombs"),
        (["--poll-seconds", "0"], "--poll-seconds 0.0: must be more than 0"),
        (["--ssl-key", "k.pem"], "--ssl-cert and --ssl-key go together"),
        # no version at all would load nothing and never be healthy
        (["--version-policy", "specific:"], "at least one version"),
        (["--version-policy", "specific:,"], "at least one version"),
        (["--version-policy", "specific:0"], "from 1 to 2**63-1"),
        (["--version-policy", "newest"], "must be latest, all or specific"),
    ],
)
def test_impossible_serve_flags_are_refused_naming_the_flag(flags, says, capsys, tmp_path):
    from graft.pipeline.cli import main

    argv = ["serve", "--model-base-path", str(tmp_path), "--model-name", "m", *flags]
    assert main(argv) == 2  # refused before anything is bound or loaded
    err = capsys.readouterr().err
    assert says in err, err
    assert "OverflowError" not in err and "Traceback" not in err


def test_serve_options_defaults_are_the_cli_defaults():
    from graft.pipeline.cli import build_parser

    args = build_parser().parse_args(["serve", "--model-base-path", "b", "--model-name", "m"])
    from graft.serving.options import from_arguments

    assert from_arguments(args) == ServeOptions("b", "m")
    assert ServeOptions("b", "m").max_pixels == 50_000_000
    with pytest.raises(ConfigError, match="--max-images 0"):
        ServeOptions("b", "m", max_images=0)


def test_documented_serve_defaults_are_the_options_defaults():
    """docs/serving.md's `--flag` (default) pairs: the one copy in ServeOptions, not another."""
    text = (REPO / "docs" / "serving.md").read_text()
    documented = re.findall(r"`--([a-z-]+)` \(([\d,.]+)\)", text)
    defaults = {f.name: f.default for f in fields(ServeOptions)}
    assert len(documented) >= 5, documented
    for flag, value in documented:
        default = defaults[flag.replace("-", "_")]
        assert type(default)(value.replace(",", "")) == default, (flag, value, default)


@pytest.mark.parametrize(
    "name, number",
    [
        ("1", 1),
        ("1796535800", 1796535800),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MAX + 1), None),
        ("99999999999999999999", None),
        ("01796535800", None),  # leading zero: ignored, never read as another path
        ("0", None),
        ("-5", None),
        ("+5", None),
        ("1e3", None),
        ("٣", None),  # a digit to str.isdigit, not a decimal version
        (".tmp-5", None),
        ("5/", 5),  # tf.io.gfile.listdir's directory spelling
    ],
)
def test_version_directory_names(name, number):
    assert version_number(name) == number


def test_only_all_digit_non_versions_are_worth_a_warning():
    assert "leading zeros" in why_not_a_version("007")
    assert "int64" in why_not_a_version("99999999999999999999")
    assert why_not_a_version("registry.json") is None
    assert why_not_a_version("12") is None
