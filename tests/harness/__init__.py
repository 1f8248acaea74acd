"""The test harness: real servers, devices and fleets on this machine, and fakes of effects.

``repo`` (an operator repo with signed example releases), ``server`` (`engine
serve` as a child process), ``device`` and ``fleet`` (devices running their own
`agent-runtime` in pull mode), ``sandbox`` (one device with its own release
repo, for runtime tests), ``http`` (HTTP servers on 127.0.0.1), ``procs``
(ports, polling, child environments, cleanup), ``sshd`` (a real OpenSSH
server on 127.0.0.1 with its own keys), ``fakes`` (in-memory
implementations of the runtime's injected effects) and ``world`` (a device on
those fakes, for state-chain tests). Tests and benches import
from here; the demo in ``examples/`` uses only the product's commands.
"""

from tests.harness.device import DeviceTimings, RuntimeDevice
from tests.harness.fleet import Fleet, preinstall_devices
from tests.harness.procs import REPO_ROOT, child_env, free_port, wait_until
from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess

__all__ = [
    "REPO_ROOT",
    "DeviceSpec",
    "DeviceTimings",
    "Fleet",
    "OperatorRepo",
    "RuntimeDevice",
    "ServerProcess",
    "child_env",
    "free_port",
    "preinstall_devices",
    "wait_until",
]
