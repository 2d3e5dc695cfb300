"""launch.py: command line, settings, safe defaults (127.0.0.1, analytics off)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import AppSettings
from app.ui import launch_kwargs
from cavmae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_private() -> None:
    s = AppSettings()
    kw = launch_kwargs(s)
    assert kw["server_name"] == "127.0.0.1" and kw["share"] is False and kw["auth"] is None
    assert kw["max_file_size"] == "1024mb"
    assert str(s.samples_dir) in kw["allowed_paths"] and str(s.work_dir) in kw["allowed_paths"]
    assert s.model == "demo" and s.concurrency_limit == 1


def test_auth_and_limits_are_validated() -> None:
    assert AppSettings.parse_auth("ann:s3:cret") == ("ann", "s3:cret")
    assert AppSettings.parse_auth(None) is None
    with pytest.raises(ConfigError, match="user:password"):
        AppSettings.parse_auth("nocolon")
    with pytest.raises(ConfigError, match="port"):
        AppSettings(port=70000)
    with pytest.raises(ConfigError, match="concurrency_limit"):
        AppSettings(concurrency_limit=0)
    with pytest.raises(ConfigError, match="precision"):
        AppSettings(precision="fp8")


def test_command_line_maps_to_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import launch

    args = launch.parse_args(
        ["--host", "0.0.0.0", "--port", "7999", "--auth", "a:b", "--model", "x.pth", "--pretrain", "p.pth",
         "--device", "cpu", "--max-upload-mb", "20", "--samples", str(tmp_path), "--allow-path", "/data"]
    )  # fmt: skip
    assert (args.host, args.port, args.auth, args.model, args.pretrain, args.device) == (
        "0.0.0.0", 7999, "a:b", "x.pth", "p.pth", "cpu",
    )  # fmt: skip
    assert (
        args.max_upload_mb == 20 and args.samples == tmp_path and args.allow_path == [Path("/data")]
    )
    assert launch.main(["--auth", "broken"]) == 2
    assert launch.parse_args([]).precision == "auto"
    assert launch.parse_args(["--precision", "bfloat16"]).precision == "bfloat16"


def test_launch_turns_analytics_off_before_gradio_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    code = "import launch, os, sys; print(os.environ['GRADIO_ANALYTICS_ENABLED'], 'gradio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"], out.stderr
    help_text = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    for flag in ("--host", "--port", "--share", "--auth", "--model", "--device", "--max-upload-mb"):
        assert flag in help_text
