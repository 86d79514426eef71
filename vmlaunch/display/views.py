"""What a person sees during `deploy`: a live table, timestamped lines, or JSON lines.

Chosen once by `make_display`: on a terminal a table (one row per VM) redrawn in place
with ANSI codes; without one, one timestamped line per transition (good in deploy.sh
logs); with `--json` every event as one JSON line (`messages.encode`), and notes on
stderr. Custom data never reaches any of them: events do not carry it.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from vmlaunch.bus.publish import describe
from vmlaunch.schema.messages import Message, encode
from vmlaunch.schema.vocabulary import Phase
from vmlaunch.state.reducer import Change, DeploymentView, VMProgress

COLUMNS = ("VM", "STATE", "ATTEMPT", "ELAPSED", "PUBLIC IP", "PRIVATE IP", "DETAIL")


def terminal_safe(text: str, *, lines: bool = False) -> str:
    """`text` as it may reach a terminal: event fields come from the bus and Azure, so a
    control character (ESC, CR, C1's CSI; a line break unless `lines`) is shown escaped,
    never obeyed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (lines and c == "\n")
                   else c.encode("unicode_escape").decode() for c in text)


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def vm_state(vm: VMProgress) -> str:
    if vm.ready:
        return Phase.READY
    if vm.failed:
        return Phase.FAILED
    return vm.phase if vm.phase != Phase.CREATED else Phase.VERIFYING


def _detail(vm: VMProgress) -> str:
    if vm.failed:
        return vm.last_error
    if vm.ready:
        checks = [c for c in ("ssh ok" if vm.ssh_verified else "",
                              f"cloud-init {vm.cloud_init}" if vm.cloud_init else "") if c]
        return ", ".join(checks) or vm.detail or "created"
    return vm.detail


def format_table(rows: list[list[str]], *, header: tuple[str, ...] = COLUMNS) -> list[str]:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(header), *rows]]


def summary_lines(view: DeploymentView) -> list[str]:
    vms = list(view.vms.values())
    ready = [vm for vm in vms if vm.ready]
    failed = [vm for vm in vms if vm.failed]
    left = len(vms) - len(ready) - len(failed)
    text = f"{len(vms)} VMs: {len(ready)} ready, {len(failed)} failed"
    lines = [text + (f", {left} unfinished" if left else "")]
    lines += [f"  {vm.name}: {vm.last_error or 'failed'}" for vm in failed]
    return lines


class Display:
    """Timestamped lines: one per transition (an event that writes to the events file)."""

    def __init__(self, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 verbose: bool = False, quiet: bool = False) -> None:
        self.out, self.err = out, err
        self.verbose, self.quiet = verbose, quiet
        self.started: dict[str, float] = {}

    def begin(self, view: DeploymentView, heading: str) -> None:
        if not self.quiet:
            self._line(heading)

    def fatal(self, text: str) -> None:
        """Why the run cannot go on; its exit code (2 or 3) follows."""
        print(terminal_safe(f"error: {text}", lines=True), file=self.err, flush=True)

    def note(self, text: str, *, warning: bool = False) -> None:
        if warning:
            print(terminal_safe(f"warning: {text}", lines=True), file=self.err, flush=True)
        elif not self.quiet:
            print(terminal_safe(f"{now_text()} {text}", lines=True), file=self.out,
                  flush=True)

    def event(self, message: Message, change: Change, view: DeploymentView, *,
              replayed: bool = False) -> None:
        self.started.setdefault(message.vm_name, time.monotonic())
        if self.quiet or replayed:
            return
        for _action, text in change.log:
            self._line(text)
        if self.verbose and not change.log:
            label, detail = describe(message)
            self._line(f"{message.vm_name or '-'} {label}: {detail}")

    def tick(self, view: DeploymentView) -> None:
        """Called about once a second (the live table redraws its clock)."""

    def finish(self, view: DeploymentView) -> None:
        for line in summary_lines(view):
            print(terminal_safe(line), file=self.out, flush=True)

    def _line(self, text: str) -> None:
        print(terminal_safe(f"{now_text()} {text}"), file=self.out, flush=True)


class JsonDisplay(Display):
    """Every event as one JSON line on stdout; everything else on stderr."""

    def begin(self, view: DeploymentView, heading: str) -> None:
        if not self.quiet:
            print(heading, file=self.err, flush=True)

    def note(self, text: str, *, warning: bool = False) -> None:
        if warning or not self.quiet:
            print(terminal_safe(f"warning: {text}" if warning else text, lines=True),
                  file=self.err, flush=True)

    def event(self, message: Message, change: Change, view: DeploymentView, *,
              replayed: bool = False) -> None:
        print(encode(message).decode(), file=self.out, flush=True)

    def finish(self, view: DeploymentView) -> None:
        for line in summary_lines(view):
            print(terminal_safe(line), file=self.err, flush=True)


class LiveTable(Display):
    """One row per VM, redrawn in place; notes scroll above it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view: DeploymentView | None = None
        self.heading = ""
        self.drawn = 0
        self.ended: dict[str, float] = {}

    def begin(self, view: DeploymentView, heading: str) -> None:
        self.view, self.heading = view, heading
        self._draw()

    def note(self, text: str, *, warning: bool = False) -> None:
        self._clear()
        super().note(text, warning=warning)
        self._draw()

    def fatal(self, text: str) -> None:
        self._clear()
        super().fatal(text)

    def event(self, message: Message, change: Change, view: DeploymentView, *,
              replayed: bool = False) -> None:
        self.started.setdefault(message.vm_name, time.monotonic())
        vm = view.vms.get(message.vm_name)
        if vm is not None and vm.finished:
            self.ended.setdefault(vm.name, time.monotonic())
        self._draw()

    def tick(self, view: DeploymentView) -> None:
        self._draw()

    def finish(self, view: DeploymentView) -> None:
        self._draw()
        self.drawn = 0  # the last table stays on screen
        super().finish(view)

    def rows(self) -> list[list[str]]:
        assert self.view is not None
        rows = []
        for vm in self.view.vms.values():
            start = self.started.get(vm.name)
            elapsed = (self.ended.get(vm.name, time.monotonic()) - start) if start else None
            rows.append([vm.name, vm_state(vm), str(vm.attempt or "-"),
                         f"{elapsed:.0f}s" if elapsed is not None else "-",
                         vm.public_ip or "-", vm.private_ip or "-",
                         _detail(vm)])
        return rows

    def _draw(self) -> None:
        if self.view is None or self.quiet:
            return
        width = shutil.get_terminal_size().columns
        lines = [self.heading, *format_table(self.rows())]
        self._clear()
        for line in lines:
            self.out.write(terminal_safe(line)[: width - 1] + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def _clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0


def make_display(*, json_lines: bool, quiet: bool, verbose: bool,
                 tty: bool | None = None) -> Display:
    tty = sys.stdout.isatty() if tty is None else tty
    kind = JsonDisplay if json_lines else LiveTable if tty and not verbose else Display
    return kind(quiet=quiet, verbose=verbose)
