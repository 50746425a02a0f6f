"""The package declares what it imports: every third-party module imported by medseg_auto is installed by
setup.cfg's install_requires (an undeclared one works here by accident of nnU-Net's own requirements)."""
from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, for every import in the package."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "medseg_auto").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _declared() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-") for line in lines}


def test_every_third_party_import_is_declared_in_setup_cfg():
    distributions = metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in _imported_modules().items():
        if module in sys.stdlib_module_names or module in ("medseg_auto", "__future__"):
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not owners & declared:
            missing.append(f"{module} (imported in {where}; distribution {', '.join(sorted(owners))})")
    assert not missing, "imported but not in setup.cfg's install_requires: " + "; ".join(missing)
