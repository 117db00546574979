"""Import contracts between the roles: which room may import which, checked on the source tree in CI.

Why our own checker and not import-linter: the installed package maps bare folders (`host/`,
`protocol/`, `tools/`) under one `meterveil` namespace, which import-linter cannot resolve in an
editable install, and with the bare folders as roots it misses imports spelled `meterveil.…`. This
checker reads the folders directly, resolves relative imports and `meterveil.` spellings alike,
counts imports inside functions (lazy imports are still imports), follows them transitively, and
rejects `importlib.import_module` / `__import__` with a computed name anywhere in host/ (an import
hidden in a string could cross a boundary unseen; literal names are followed like imports).

Run: ``python -m meterveil.tools.import_contracts [REPO]`` (exit 1 and one line per violation).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOTS = {"protocol": "meterveil.protocol", "host": "meterveil.host", "tools": "meterveil.tools"}
H = "meterveil.host."


@dataclass(frozen=True)
class Forbidden:
    """No module under `source` may reach any of `targets`, directly or through other modules."""

    name: str
    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Layers:
    """Each layer may import the layers below it, never those above (direct imports)."""

    name: str
    layers: tuple[str, ...]  # top first


CONTRACTS: tuple[Forbidden | Layers, ...] = (
    Layers("host rooms are layered", (
        H + "cli", H + "demo", H + "loadgen", H + "web", H + "decryption", H + "gateway", H + "backoffice", H + "audit",
        H + "household", H + "store", H + "common")),
    Forbidden("the household holds its own key only: no meter keys, no Paillier secret key", H + "household",
              (H + "gateway", H + "decryption", H + "backoffice", H + "audit", H + "demo", H + "web",
               H + "cli")),
    Forbidden("the gateway holds no decryption code, no back office and no reporting stack", H + "gateway",
              (H + "decryption", H + "backoffice", H + "audit", H + "demo", H + "cli", H + "web",
               "pandas", "matplotlib")),
    Forbidden("the decryption role never reaches the gateway or its meter keys", H + "decryption",
              (H + "gateway", H + "demo", H + "web")),
    Forbidden("the back office holds no keys: no gateway, no decryption role", H + "backoffice",
              (H + "gateway", H + "decryption", H + "demo", H + "web")),
    Forbidden("the audit trail is readable without any role's keys", H + "audit",
              (H + "gateway", H + "decryption", H + "backoffice", H + "demo", H + "web")),
    Forbidden("the load generator holds meter keys: it never reaches the decryption role", H + "loadgen",
              (H + "decryption", H + "backoffice", H + "audit", H + "demo", H + "web", "pandas", "matplotlib")),
    Forbidden("the web tier holds no key", H + "web", (H + "gateway", H + "decryption", H + "demo")),
    Forbidden("the store knows no role", H + "store",
              (H + "gateway", H + "decryption", H + "backoffice", H + "audit", H + "demo", H + "web")),
    Forbidden("common code is below every role", H + "common",
              (H + "gateway", H + "decryption", H + "backoffice", H + "audit", H + "store", H + "demo",
               H + "web", H + "cli")),
    Forbidden("provisioning tools never load the decryption role", "meterveil.tools",
              (H + "decryption", H + "demo", H + "web")),
    Forbidden("the protocol runs on MicroPython: no host code, no CPython-only stack", "meterveil.protocol",
              (H.rstrip("."), "meterveil.tools", "pandas", "matplotlib", "phe", "gmpy2", "paho")),
)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def discover(repo: Path) -> dict[str, Path]:
    """module name -> file, for every .py under the mapped folders."""
    mods: dict[str, Path] = {}
    for folder, pkg in ROOTS.items():
        for f in sorted((repo / folder).rglob("*.py")):
            rel = f.relative_to(repo / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _resolve(name: str) -> str:
    """Bare spellings (`protocol.frame`, as the firmware writes them) -> meterveil names."""
    head = name.split(".")[0]
    return f"meterveil.{name}" if head in ROOTS else name


def imports_of(module: str, path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """(imported module names, problems) of one file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = _resolve(node.module or "")
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Call):
            fn = node.func
            dotted = (fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else "")
            if dotted in ("import_module", "__import__"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(_resolve(arg.value))
                elif module.startswith(H):
                    problems.append(f"{module} (line {node.lineno}): import by a computed name; write a plain "
                                    f"import so the contracts can see it")
    return found, problems


def check(repo: Path) -> list[str]:
    mods = discover(repo)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for m, f in mods.items():
        graph[m], p = imports_of(m, f, known)
        problems += p

    def chain(src: str, targets: tuple[str, ...]) -> list[str] | None:
        """Shortest import chain from src to any target (BFS over our modules)."""
        prev: dict[str, str | None] = {src: None}
        queue = [src]
        while queue:
            cur = queue.pop(0)
            for nxt in sorted(graph.get(cur, ())):
                if nxt in prev:
                    continue
                prev[nxt] = cur
                if any(_within(nxt, t) for t in targets):
                    path, node = [], nxt
                    while node is not None:
                        path.append(node)
                        node = prev[node]
                    return path[::-1]
                if nxt in graph:
                    queue.append(nxt)
        return None

    for c in CONTRACTS:
        if isinstance(c, Forbidden):
            for m in sorted(mods):
                if _within(m, c.source):
                    path = chain(m, c.targets)
                    if path:
                        problems.append(f"[{c.name}] {' -> '.join(path)}")
        else:
            rank = {layer: i for i, layer in enumerate(c.layers)}

            def layer_of(name: str, rank: dict[str, int] = rank) -> int | None:
                for layer, i in rank.items():
                    if _within(name, layer):
                        return i
                return None

            for m in sorted(mods):
                mine = layer_of(m)
                if mine is None:
                    continue
                for dep in sorted(graph[m]):
                    theirs = layer_of(dep)
                    if theirs is not None and theirs < mine:
                        problems.append(f"[{c.name}] {m} imports {dep} from a higher layer")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    repo = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    problems = check(repo)
    for p in problems:
        print(f"import contract broken: {p}")
    n = len(CONTRACTS)
    print(f"import contracts: {n} checked, {len(problems)} broken" if problems else f"import contracts: {n} kept")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
