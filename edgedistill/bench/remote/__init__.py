"""``bench --device ssh://[user@]host[:port]``: the same rows, worker protocol, interleaved rounds
and report as on this machine, measured on a device reached over SSH (design.md §9).

``ssh.py`` is the transport (the system OpenSSH client, multiplexed), ``device.py`` the
device (probe, rows, copy, workers, clean-up), ``agent.py`` what runs there besides the
worker (standard library only, sent as source)."""

from edgedistill.bench.remote.device import DEFAULT_PYTHON, MIN_PYTHON, RemoteDevice, open_device
from edgedistill.bench.remote.ssh import SSH_CONFIG_ENV, is_ssh, parse_target

__all__ = ["RemoteDevice", "open_device", "is_ssh", "parse_target", "DEFAULT_PYTHON", "MIN_PYTHON", "SSH_CONFIG_ENV"]
