"""Cheap imports: the pytest plugin and the command line load neither the SDK nor aiohttp.

Installing line-markread registers a pytest plugin, so every pytest session
in that environment imports it; ``linebot.v3`` and aiohttp cost 1-2 s there.
They must load only when a fixture or a class that needs them is used.
Checked in fresh interpreters, where ``sys.modules`` starts empty.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import line_markread
import line_markread.testing

HEAVY = ("linebot", "aiohttp")

REPORT_HEAVY = textwrap.dedent(
    """
    import sys
    heavy = sorted({name.split(".")[0] for name in sys.modules} & {"linebot", "aiohttp"})
    print("HEAVY:" + ",".join(heavy), file=sys.stderr)
    """
)


def _heavy_modules_after(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code + REPORT_HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("HEAVY:"))
    return [name for name in line.removeprefix("HEAVY:").split(",") if name]


@pytest.mark.parametrize(
    "code",
    [
        "import line_markread",
        "import line_markread.testing",
        "import line_markread.testing._pytest_plugin",
        "from line_markread import __version__",
        "import line_markread._cli",
    ],
)
def test_importing_loads_neither_the_sdk_nor_aiohttp(code: str) -> None:
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["demo", "--help"],
        ["check", "--help"],
        ["worker", "--help"],
        ["queue", "--help"],
    ],
)
def test_command_line_help_loads_neither_the_sdk_nor_aiohttp(argv: list[str]) -> None:
    code = f"from line_markread._cli import main\nassert main({argv!r}) == 0\n"
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize(
    "code",
    [
        "import line_markread",
        "from line_markread import WebhookHandler\nWebhookHandler('s', access_token='t')",
        "from line_markread._cli import main\nassert main(['worker', '--help']) == 0",
    ],
)
def test_the_queue_extra_loads_only_for_bots_that_use_it(code: str) -> None:
    """procrastinate and psycopg (``line_markread[postgres]``) load with ``PostgresQueue`` only."""
    report = (
        "\nimport sys\nprint('DB:' + ','.join(sorted({n.split('.')[0] for n in sys.modules}"
        " & {'procrastinate', 'psycopg', 'psycopg_pool'})), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code + report],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert next(x for x in result.stderr.splitlines() if x.startswith("DB:")) == "DB:"


def test_using_a_name_loads_what_it_needs() -> None:
    """The check above can fail: using the classes does load the SDK and aiohttp."""
    code = "import line_markread\nline_markread.WebhookHandler\n"
    assert _heavy_modules_after(code) == ["aiohttp", "linebot"]


def test_a_pytest_session_that_never_touches_line_loads_neither(tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_plugin_loaded_but_cheap(request):
                assert request.config.pluginmanager.has_plugin("line_markread")
                assert "linebot" not in sys.modules
                assert "aiohttp" not in sys.modules
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_unrelated.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.parametrize("module", [line_markread, line_markread.testing])
def test_every_public_name_resolves_and_is_listed(module: ModuleType) -> None:
    for name in module.__all__:
        assert getattr(module, name) is not None
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018  # the attribute access is the test
