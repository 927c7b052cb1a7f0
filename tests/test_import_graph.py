"""fastload's modules import one another one way: no cycle (counting imports inside
functions and those for type checking only), and the lower layers import nothing above
them (the pool, the epoch's iterator and the device stages know nothing of the loader)."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastload")


def _module(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].replace(os.sep, ".")
    return relative.removesuffix(".__init__")


class _Imports(ast.NodeVisitor):
    """The fastload modules one module imports, anywhere in it."""

    def __init__(self, package: str) -> None:
        self.package = package
        #: (module, names imported from it): a name is a submodule, or something of the module's
        self.found: list[tuple[str, list[str]]] = []

    def visit_Import(self, node: ast.Import) -> None:
        self.found.extend((alias.name, []) for alias in node.names if alias.name.split(".")[0] == "fastload")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == "fastload":
            base = node.module
        else:
            return
        self.found.append((base, [alias.name for alias in node.names]))


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = _module(path)
                imports = _Imports(module if name == "__init__.py" else module.rpartition(".")[0])
                with open(path) as file:
                    imports.visit(ast.parse(file.read()))
                graph[module] = imports.found
    modules = set(graph)

    def targets(base: str, names: list[str]) -> set[str]:
        # ``from package import submodule`` needs the submodule (the package is being imported
        # already); any other name needs the module that defines it
        submodules = {f"{base}.{name}" for name in names} & modules
        return submodules | ({base} if len(submodules) < len(names) or not names else set())

    return {module: {m for base, names in found for m in targets(base, names) if m in modules and m != module}
            for module, found in graph.items()}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40
    cycles, state, path = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported)
        state[module] = "done"
        path.pop()

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_pool_the_epochs_iterator_and_the_device_stages_import_nothing_of_the_loader():
    graph = import_graph()
    above = {"fastload.loader", "fastload.integrations", "fastload.integrations.accelerate",
             "fastload.integrations.transformers"}
    lower = [m for m in graph if m.startswith("fastload.pool")] + ["fastload.loader_iter", "fastload.prefetch",
                                                                    "fastload.device"]
    assert {m: sorted(graph[m] & above) for m in lower if graph[m] & above} == {}
    assert "fastload.loader_iter" not in graph["fastload.prefetch"] | graph["fastload.pool.pool"]
