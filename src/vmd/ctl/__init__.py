"""vmctl(8) for vmd: the command-line client of the control protocol (docs/protocol.md).

    main.py     command table (unique-prefix abbreviation), per-command argument parsing, output
    client.py   the JSON-lines connection to /run/vmd.sock ($VMD_SOCKET overrides it)
    status.py   the `vmctl status` table
    console.py  the built-in terminal client (`console`, `start -c`)
    create.py   `vmctl create`: raw images and conversion here; qcow2 through vmd.disk
    strtonum.py strtonum(3)
    getopt.py   BSD getopt(3) with long options

Sizes (fmt_scaled, scan_scaled, parse_size) come from vmd.sizes and the limits from vmd.limits.
"""
