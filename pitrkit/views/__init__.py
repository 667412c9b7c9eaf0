"""How reports look. A collecting module (ops/status.py, ops/verify.py, ops/retention.py,
ops/daemon_facts.py) returns a typed report and prints nothing; each format renders every
report in one module: `text` (what the commands print), `json` (--json and
/status.json), `html` (the daemon's page) and `metrics` (its /metrics).

Views import the report types, never the other way: a report is collected without any
rendering loaded, and the glue that collects, prints and ends a command with its exit
code lives above both (cli.py for the commands, daemon/status_server.py for the daemon).
"""
