"""How reports look. A collecting module (ops/status.py, ops/verify.py, ops/retention.py,
and catalog/contents.py's `BackupListing` and `WalListing`) returns a typed report and
prints nothing; each format renders in one module: `text` (what the commands print) and
`json` (--json, and /status.json) every report, `html` (the daemon's page) and `metrics`
(its /metrics) only the status report and the daemon's facts (ops/daemon_facts.py holds
their types; daemon/service.py fills them in). `restore-plan` renders itself
(restore/plan.py: `describe`, or storage/codec.py's `encode` for --json), because
`restore` prints the same plan before it starts.

Views import the report types, never the other way: a report is collected without any
rendering loaded, and the glue that collects, prints and ends a command with its exit
code lives above both (cli.py for the commands, daemon/status_server.py for the daemon).
"""
