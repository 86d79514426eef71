"""What every command shares: its output (terminal-safe), its exit codes, the files' check."""

from __future__ import annotations

import sys
from pathlib import Path

from vmlaunch.display.views import terminal_safe
from vmlaunch.errors import ExitCode
from vmlaunch.state.statefile import LoadedState, StateFileError, load_state


def say(text: str = "") -> None:
    print(terminal_safe(text), flush=True)


def err(text: str) -> None:
    print(terminal_safe(text, lines=True), file=sys.stderr, flush=True)


def load_files(state_file: Path, events_file: Path, *, writable: bool = False,
               deployment_id: str | None = None) -> LoadedState | int:
    """Both files checked, or the exit code (after saying why): 2 malformed or another
    deployment's, 3 unusable. A truncated state file is rebuilt, with a warning."""
    try:
        loaded = load_state(state_file, events_file, writable=writable,
                            deployment_id=deployment_id)
    except (StateFileError, OSError) as exc:
        malformed = isinstance(exc, StateFileError)  # else the files cannot be used
        err(f"error: {exc}" if malformed else f"error: cannot use the state files: {exc}")
        return ExitCode.BAD_INPUT if malformed else ExitCode.CANNOT_RUN
    if loaded.rebuilt:
        err(f"warning: {loaded.rebuilt}")
    return loaded
