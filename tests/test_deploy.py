"""The files in ``deploy/`` hold together: the systemd unit and the container file run the real
``syncd`` command with flags and settings it has, and the unit passes ``systemd-analyze
verify`` where that is installed."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.syncd_process import ROOT

UNIT = ROOT / "deploy" / "syncd.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
SYNCD = Path(sys.executable).parent / "syncd"
"""The installed ``syncd`` command (``pip install`` puts it next to the interpreter)."""


def syncd_help() -> str:
    done = subprocess.run([str(SYNCD), "--help"], capture_output=True, text=True, check=True)
    return done.stdout


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_the_syncd_command_with_flags_it_has() -> None:
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "syncd"
    flags = [arg for arg in command[1:] if arg.startswith("--")]
    assert flags, command
    known = syncd_help()
    assert [flag for flag in flags if flag not in known] == []
    assert service["User"] == "syncd" and service["Type"] == "exec"
    assert service["KillSignal"] == "SIGTERM"  # syncd's clean shutdown
    # exit status 2 is a mistake in the settings (syncd.__main__): restarting cannot help
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    storage = command[command.index("--storage-dir") + 1]
    assert storage == f"/var/lib/{service['StateDirectory']}"
    assert "EnvironmentFile" in service and unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    settings = tmp_path / "syncd.env"
    settings.write_text("SYNCD_DATABASE_URL=postgresql://syncd@localhost/app\n")
    text = UNIT.read_text()
    text = text.replace("/opt/syncd/bin/syncd", str(SYNCD))  # where it is installed here
    text = text.replace("/etc/syncd/syncd.env", str(settings))
    copy = tmp_path / "syncd.service"
    copy.write_text(text)
    done = subprocess.run(
        [analyze, "verify", copy.name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def instructions() -> list[tuple[str, str]]:
    """The container file's instructions (continuation lines joined, comments left out)."""
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_container_file_installs_the_package_and_runs_syncd() -> None:
    steps = instructions()
    keywords = [keyword for keyword, _ in steps]
    assert keywords[0] == "FROM" and keywords.count("ENTRYPOINT") == 1
    copied = {
        source for keyword, rest in steps if keyword == "COPY" for source in rest.split()[:-1]
    }
    assert all((ROOT / source).exists() for source in copied), copied
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "shapes", "syncd"} <= copied
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    assert entrypoint == ["syncd"] and "syncd" in project["scripts"]
    assert any(keyword == "RUN" and "pip install" in rest for keyword, rest in steps)
    assert dict(steps)["USER"] not in ("root", "0")
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"


def test_the_container_files_settings_are_syncd_settings() -> None:
    steps = dict(instructions())
    settings = dict(pair.split("=", 1) for pair in shlex.split(steps["ENV"]))
    known = syncd_help()
    assert [name for name in settings if f"[{name}]" not in known] == []
    assert steps["EXPOSE"] == settings["SYNCD_PORT"]
    assert steps["VOLUME"] == settings["SYNCD_STORAGE_DIR"]
    assert settings["SYNCD_HOST"] == "0.0.0.0"  # reachable through the published port
