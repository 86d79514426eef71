"""What every az simulator command handler gets: the Ctx, and the target of --name/--ids."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from .errors import AzError, rg_not_found
from .scenario import Scenario
from .state import StateStore, materialize


class Ctx:
    """What a command handler needs: scenario, state, parsed args, scaled sleeping."""

    def __init__(self, scn: Scenario, store: StateStore, args: dict) -> None:
        self.scn = scn
        self.store = store
        self.args = args
        # Poll often enough to notice a delete, rarely enough for 20 parallel clients.
        self.poll = min(0.1, max(0.02, 0.1 * scn.scale))

    def view(self) -> tuple[dict, float]:
        t = time.time()
        return materialize(self.store.read(), t), t

    @contextmanager
    def tx(self):
        with self.store.transaction() as state:
            t = time.time()
            yield materialize(state, t), t

    def require_rg(self, rg: str) -> None:
        if not self.scn.rg_exists(rg):
            raise rg_not_found(rg)

    def warn(self, text: str) -> None:
        if not self.args["only_show_errors"]:
            sys.stderr.write(text)

    def sleep_until(self, deadline: float, check=None) -> None:
        while (left := deadline - time.time()) > 0:
            time.sleep(min(left, self.poll))
            if check is not None:
                check()


def target(a: dict) -> tuple[str, str]:
    """The resource group and name of show/delete/wait-style commands (or from --ids)."""
    rg, name = a.get("resource_group"), a.get("name")
    if a.get("ids"):
        parts = a["ids"][0].split("/")
        rg, name = (parts[4] if len(parts) > 4 else rg), parts[-1]
    if not rg:
        raise AzError("ERROR: (--resource-group | --ids) are required")
    if not name:
        raise AzError("ERROR: (--name | --ids) are required")
    return rg, name
