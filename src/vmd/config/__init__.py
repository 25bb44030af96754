"""vm.conf(5): the lexer and parser (OpenBSD's grammar), the spec dataclasses, and VM instances."""

from vmd.config.instance import InstanceError, make_instance
from vmd.config.parser import AccountResolver, MappingResolver, SystemResolver, parse_config, parse_string
from vmd.config.spec import (
    AgentxSpec,
    AllowInstance,
    Config,
    DiskSpec,
    GlobalSpec,
    InterfaceSpec,
    OwnerSpec,
    ParseResult,
    SwitchSpec,
    VmSpec,
)
from vmd.limits import check_vm_name  # the name rule lives with the limits

__all__ = [
    "AccountResolver", "AgentxSpec", "AllowInstance", "Config", "DiskSpec", "GlobalSpec", "InstanceError",
    "InterfaceSpec", "MappingResolver", "OwnerSpec", "ParseResult", "SwitchSpec", "SystemResolver", "VmSpec",
    "check_vm_name", "make_instance", "parse_config", "parse_string",
]
