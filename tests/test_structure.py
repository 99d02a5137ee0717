"""Structure rules the code must keep, checked on its source (no import side effects).

* Layers run one way: dsp -> models -> library -> clients -> daemon. A module never imports
  (even lazily, inside a function) anything from a higher layer: ``emberd devices`` must
  not pull in the daemon, the audio device source lives with the other sources in dsp.
* The daemon and the dsp layer touch no other object's private attributes: the device
  source offers public operations (``detach``, ``deliver``, ``capturing``) to the
  reconnect logic instead of having its stream and timestamp slots written from outside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import emberd

PACKAGE = Path(emberd.__file__).parent
LAYERS = ("dsp", "models", "library", "clients", "daemon")  # lowest first
PRIVATE_OK = {
    "os._exit", "argparse._SubParsersAction",  # stdlib names
    "getattr(sd, '_exit_handler', None)",  # sounddevice's Pa_Terminate hook (see dsp/device.py)
    "getattr(sd, '_terminate', None)",  # sounddevice's Pa_Terminate (dsp/device.release_portaudio)
}


def _modules(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (PACKAGE / layer).rglob("*.py"))


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return out


def test_layers_import_only_downwards() -> None:
    wrong = []
    for level, layer in enumerate(LAYERS):
        higher = {f"emberd.{name}" for name in LAYERS[level + 1 :]}
        for path in _modules(layer):
            for line, module in _imported(ast.parse(path.read_text())):
                if any(module == h or module.startswith(h + ".") for h in higher):
                    wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, wrong


def test_the_device_source_lives_with_the_other_sources() -> None:
    assert (PACKAGE / "dsp" / "device.py").is_file()
    assert not (PACKAGE / "daemon" / "capture.py").exists()


def test_daemon_and_dsp_touch_no_other_objects_private_state() -> None:
    wrong = []
    for path in _modules("dsp", "daemon"):
        tree = ast.parse(path.read_text())
        classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ({"self", "cls"} | classes):
                    continue
                if ast.unparse(node) in PRIVATE_OK:
                    continue
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant) \
                    and str(node.args[1].value).startswith("_") \
                    and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "self") \
                    and ast.unparse(node) not in PRIVATE_OK:
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, wrong


def test_reconnect_threads_are_owned_and_joined() -> None:
    """Every thread the watchdog starts is kept (so ``close`` can join it)."""
    tree = ast.parse((PACKAGE / "daemon" / "reconnect.py").read_text())
    started_unowned = [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "start" and isinstance(node.func.value, ast.Call)
    ]  # fmt: skip
    assert not started_unowned, f"threads started without a reference: lines {started_unowned}"
    source = (PACKAGE / "daemon" / "reconnect.py").read_text()
    close = source[source.index("    def close(self)"):]
    assert ".join(" in close[: close.index("\n    def ", 10)]
