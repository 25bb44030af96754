import sys
from pathlib import Path

# Let the suite run from a checkout without installation too.
SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# Tests marked hwvirt need a hardware KVM: where there is none, they run in the test host (tests/hwvirt/).
pytest_plugins = ("tests.hwvirt.plugin",)
