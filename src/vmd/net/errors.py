"""The one exception type the network layer raises: its message is one line, fit for `vmd: <message>`."""


class NetError(Exception):
    """A network setup failure, with a one-line message."""
