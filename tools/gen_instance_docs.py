"""Write (or check) the instance-file reference and its JSON Schema.

``python tools/gen_instance_docs.py`` regenerates ``docs/instances.md`` and
``docs/instance.schema.json`` from the instance models (``kvmlab.spec.reference``);
``--check`` writes nothing and exits 1 when either file is stale, naming it. The test
suite runs the same comparison (``tests/docs/test_reference.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmlab.spec.reference import render_reference, schema_text, undocumented

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {
    ROOT / "docs" / "instances.md": render_reference,
    ROOT / "docs" / "instance.schema.json": schema_text,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"fields without a description in kvmlab/spec/fielddocs.py: {', '.join(missing)}")
        return 1
    stale = []
    for path, render in OUTPUTS.items():
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
        print(f"stale: {names} (run: python tools/gen_instance_docs.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
