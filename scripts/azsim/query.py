"""`--query` and `vm wait --custom`: JMESPath through the `jmespath` package, as azure-cli does.

jmespath is imported on first use only: it costs ~20 ms (it imports `inspect`), and most
calls have no query.

A query is evaluated over jmespath's own parse tree, but the nodes of a projection of
fields (`[].{name: name, ip: a.b[].c}`, what the tool's listings ask for) are turned into
closures first: jmespath's interpreter dispatches each node for each VM, which was ~10 ms
of a 500-VM listing's ~45, against ~2 ms this way. Each closure does what the interpreter's
`visit_<type>` does for that node; any other node (a filter, a function, a slice, ...) is
left to the interpreter itself, with the same options.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import QUERY_REF, AzError

Eval = Callable[[object], object]


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
    from jmespath.visitor import TreeInterpreter

    try:
        compiled = jmespath.compile(query) if isinstance(query, str) else query
        interpreter = TreeInterpreter(jmespath.Options(dict_cls=OrderedHash))
        try:
            evaluate = closure(compiled.parsed, interpreter)
        except RecursionError:  # building takes more frames than the interpreter needs
            return interpreter.visit(compiled.parsed, data)
        return evaluate(data)
    except jmespath.exceptions.JMESPathError as e:
        raise AzError(f"ERROR: Invalid jmespath query supplied for `--query`: {e}\n"
                      f"{QUERY_REF}") from None


def closure(node: dict, interpreter) -> Eval:
    """`node` as a function of the current value: interpreter.visit(node, value)."""
    make = _CLOSURES.get(node["type"])
    if make is None:
        return lambda value: interpreter.visit(node, value)
    return make(node, interpreter)


def _same(node: dict, interpreter) -> Eval:  # identity, current
    return lambda value: value


def _field(node: dict, interpreter) -> Eval:
    key = node["value"]

    def field(value):
        try:
            return value.get(key)
        except AttributeError:
            return None
    return field


def _chain(node: dict, interpreter) -> Eval:  # subexpression, index_expression, pipe
    steps = [closure(child, interpreter) for child in node["children"]]

    def chain(value):
        for step in steps:
            value = step(value)
        return value
    return chain


def _projection(node: dict, interpreter) -> Eval:
    base, each = (closure(child, interpreter) for child in node["children"])

    def projection(value):
        elements = base(value)
        if not isinstance(elements, list):
            return None
        return [found for found in map(each, elements) if found is not None]
    return projection


def _flatten(node: dict, interpreter) -> Eval:
    base = closure(node["children"][0], interpreter)

    def flatten(value):
        elements = base(value)
        if not isinstance(elements, list):
            return None
        merged: list = []
        for element in elements:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged
    return flatten


def _key_val_pair(node: dict, interpreter) -> Eval:
    return closure(node["children"][0], interpreter)


def _multi_select_dict(node: dict, interpreter) -> Eval:
    pairs = [(pair["value"], closure(pair, interpreter)) for pair in node["children"]]
    make_dict = interpreter._dict_cls  # the Options' dict_cls, as the interpreter uses it

    def multi_select_dict(value):
        if value is None:
            return None
        collected = make_dict()
        for key, evaluate in pairs:
            collected[key] = evaluate(value)
        return collected
    return multi_select_dict


_CLOSURES: dict[str, Callable[[dict, object], Eval]] = {
    "identity": _same, "current": _same, "field": _field, "subexpression": _chain,
    "index_expression": _chain, "pipe": _chain, "projection": _projection,
    "flatten": _flatten, "key_val_pair": _key_val_pair,
    "multi_select_dict": _multi_select_dict,
}
