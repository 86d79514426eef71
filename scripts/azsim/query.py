"""`--query` and `vm wait --custom`: JMESPath through the `jmespath` package, as azure-cli does.

jmespath is imported on first use only: it costs ~20 ms (it imports `inspect`), and most
calls have no query.
"""

from __future__ import annotations

from .errors import QUERY_REF, AzError


class OrderedHash(dict):
    """A multiselect-hash result: `-o tsv` keeps its key order (knack's OrderedDict)."""


def jmespath_type(text: str):
    """azure-cli's argparse type of --query; argparse reports the ValueError of a bad query."""
    import jmespath

    try:
        return jmespath.compile(text)
    except KeyError as e:  # as azure-cli does: some malformed queries raise KeyError
        raise ValueError(text) from e


def search(query, data):
    """Evaluate a query (compiled by --query, or the text of --custom) as knack does.

    A JMESPath error while evaluating (a type error in a function, an unknown function) is
    azure-cli's `handle_exception` text, exit 1.
    """
    import jmespath

    try:
        compiled = jmespath.compile(query) if isinstance(query, str) else query
        return compiled.search(data, jmespath.Options(dict_cls=OrderedHash))
    except jmespath.exceptions.JMESPathError as e:
        raise AzError(f"ERROR: Invalid jmespath query supplied for `--query`: {e}\n"
                      f"{QUERY_REF}") from None
