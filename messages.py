#!/usr/bin/env python3
"""The versioned message schema shared by the worker, the orchestrator and the polling mode.

It lives in `vmlaunch.schema.messages` (re-exported here); `python messages.py schema`
prints the JSON Schema of every message type, keyed by subject (docs/messages.md).
"""

from __future__ import annotations

import json
import sys

import click

from vmlaunch.schema.messages import *  # noqa: F403
from vmlaunch.schema.messages import Subject, json_schemas


@click.group()
def cli() -> None:
    """The message schema of the Azure VM Launch Manager."""


@cli.command()
@click.option("--type", "type_", type=click.Choice([s.value for s in Subject]),
              help="Print only this message type's schema.")
def schema(type_: str | None) -> None:
    """Print the JSON Schema of every message type (or one), keyed by subject.

    Consumers at the same major version should additionally accept unknown fields
    when a message's minor version is newer than theirs.
    """
    schemas = json_schemas()
    out = schemas[type_] if type_ else schemas
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    cli()
