"""The throwaway-cluster rig: `localpg` makes and runs local PostgreSQL clusters as an
unprivileged user, for `pitrkit demo` (`run`), the tests and the benchmarks. The product
never imports it; only the `demo` command does, when it runs.
"""
