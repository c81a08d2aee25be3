"""``mechscope dashboard``: start the Streamlit dashboard (``streamlit run app/Home.py``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from mechscope.probes.errors import InputError, MissingPackageError

HOME = Path(__file__).resolve().parents[1] / "Home.py"
# what the repository's .streamlit/config.toml sets, passed as flags so it holds from any
# directory: no usage statistics; the toolbar of a local tool (rerun, settings; no deploy button)
SETTINGS = {"--browser.gatherUsageStats": "false", "--client.toolbarMode": "viewer"}


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="open the interactive dashboard",
                       description="Start the Streamlit dashboard on localhost.")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=run)


def streamlit_argv(port: int, headless: bool) -> list[str]:
    if not 0 < port < 65536:
        raise InputError(f"Port {port} is out of range (1..65535).")
    return [sys.executable, "-m", "streamlit", "run", str(HOME), "--server.port", str(port),
            "--server.headless", "true" if headless else "false", *[a for k, v in SETTINGS.items() for a in (k, v)]]


def run(args: argparse.Namespace) -> int:
    argv = streamlit_argv(args.port, args.headless)
    if importlib.util.find_spec("streamlit") is None:
        raise MissingPackageError("Package streamlit is not installed: pip install streamlit")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # replaces this process; returns only in tests that stub execv
    return 0
