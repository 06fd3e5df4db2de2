"""Put the source roots on the virtual environment's path with a .pth file.

The deployables live in several roots (services/, libs/, gen/); a .pth file makes
`python -m gateway` and `from flickrhub.v1 import jobs_pb2` work in the venv, and
keeps working for packages created after the install (gen/ appears after setup).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    roots = [ROOT / "services", ROOT / "libs", ROOT / "gen", ROOT]
    (site / "flickrhub-dev.pth").write_text("".join(f"{r}\n" for r in roots))
    print(f"source roots on the path via {site / 'flickrhub-dev.pth'}")


if __name__ == "__main__":
    main()
