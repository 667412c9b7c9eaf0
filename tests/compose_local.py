"""compose.yaml run without containers: each service a local process, from the file itself.

There is no container engine on the project's machines, so the compose dev setup's
topology is tested by reading compose.yaml the way `docker compose up` reads it (the
Compose specification's variable interpolation, YAML merge keys) and starting every
service as a process on this host: its command, its environment, its user, in the order
its `depends_on` conditions and the dependencies' healthchecks give, stopped in reverse
order with its `stop_signal` within its `stop_grace_period`.

What exists only inside containers is mapped by one explicit table, a `LocalHost`:
* service host names (and a container's own 0.0.0.0) become 127.0.0.1; the ports are
  compose variables (`${PRIMARY_PORT:-5432}`), set to free ports, so no two services
  clash;
* a named volume is one local directory, shared by every service that mounts it;
* a path in a service built from the Dockerfile is its image's local equivalent (the dev
  scripts in the checkout, pitrkit's venv), else a directory private to that service
  (each container's own file system);
* an image pulled from a registry is run as the local program that is the same thing.

Anything the mapping does not know (an interpolation form, a depends_on condition, a
healthcheck form) is refused, so a change to compose.yaml either runs here or fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import pgharness

# ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR and $$ (a literal $): the forms this
# setup uses. Compose knows more (${VAR:?error}, nested defaults); they are refused.
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-)(?P<default>[^${}]*))?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ComposeError(Exception):
    """compose.yaml says something the local run does not know how to do."""


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """`text` with compose's variable references replaced from `variables`."""
    def value(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if name := match["bare"]:
            return variables.get(name, "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ComposeError(f"unsupported interpolation ${{{match['braced']}}}")
        name, op, default = braced["name"], braced["op"], braced["default"] or ""
        if op == ":-" and not variables.get(name):
            return default
        if op == "-" and name not in variables:
            return default
        return variables.get(name, "")
    return _VARIABLE.sub(value, text)


def variables_used(text: str) -> set[str]:
    """The names of the variables `text` refers to."""
    names = set()
    for match in _VARIABLE.finditer(text):
        if match["bare"]:
            names.add(match["bare"])
        elif match["braced"] is not None and (braced := _BRACED.fullmatch(match["braced"])):
            names.add(braced["name"])
    return names


def load(compose_file: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as a mapping, every string interpolated (merge keys resolved)."""
    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, variables)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        return node
    loaded: dict[str, Any] = walk(yaml.safe_load(compose_file.read_text()))
    return loaded


def seconds(duration: str | int | float) -> float:
    """A compose duration ("2s", "1m30s") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = _DURATION.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ComposeError(f"unsupported duration {duration!r}")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


@dataclass(frozen=True)
class LocalHost:
    """The table of what is container-only, and what it is on this host."""

    root: Path  # scratch: volumes/<name>, containers/<service>, logs/<service>.log
    # Container host names (the services', 0.0.0.0) -> the local address.
    hosts: Mapping[str, str]
    # Paths inside the image compose.yaml builds -> local paths (its scripts, its venv).
    image_paths: Mapping[str, Path]
    # PATH as the built image sets it (the Dockerfile's ENV PATH), locally.
    image_path_variable: str
    # Images pulled from a registry -> the local program that is their entrypoint.
    images: Mapping[str, Sequence[str]]
    # Paths that are the same in a container and on the host (/dev/null).
    same_paths: Sequence[str] = ("/dev/",)

    def host(self, text: str) -> str:
        """`text` with a container host name at its start (a bare name, name:port, or a
        URL's host) replaced by the local address."""
        for name, local in self.hosts.items():
            text = re.sub(rf"^((?:[a-z]+://)?){re.escape(name)}(?=$|:|/)", rf"\g<1>{local}", text)
        return text


@dataclass
class LocalService:
    """One compose service as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    as_server_user: bool
    healthcheck: list[str] | None
    health_deadline: float
    depends_on: dict[str, str]  # service -> condition
    ports: list[int]  # the container ports it publishes, which it must listen on
    stop_signal: signal.Signals
    stop_grace: float
    log: Path
    # A path or host name as this service sees it -> what it is on this host.
    mapped: Callable[[str], str]
    process: subprocess.Popen[bytes] | None = None
    returncode: int | None = None

    def exec(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`docker compose exec SERVICE ARGV`: its paths and host names mapped, run with
        the service's environment and user."""
        return self.run([self.mapped(arg) for arg in argv], timeout)

    def run(self, argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """argv as it is (mapped already) with the service's environment and user."""
        if self.as_server_user:
            return pgharness.run_as_server_user(argv, env=self.env, timeout=timeout, check=False)
        return subprocess.run(list(argv), env=self.env, cwd="/", capture_output=True, text=True, timeout=timeout,
                              check=False)

    def logged(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Topology:
    """compose.yaml's services, mapped onto this host."""

    compose: dict[str, Any]
    local: LocalHost
    services: dict[str, LocalService] = field(default_factory=dict)

    @classmethod
    def from_file(cls, compose_file: Path, variables: Mapping[str, str], local: LocalHost) -> Topology:
        compose = load(compose_file, variables)
        made = cls(compose, local)
        for directory in ("volumes", "containers", "logs"):
            (local.root / directory).mkdir(exist_ok=True)
        for name, volume in (compose.get("volumes") or {}).items():
            if volume:
                raise ComposeError(f"volume {name}: only plain named volumes are mapped, not {volume!r}")
            pgharness.make_server_dir(local.root / "volumes" / name)
        for name, spec in compose["services"].items():
            made.services[name] = made._service(name, spec)
        for name, service in made.services.items():
            for dependency, condition in service.depends_on.items():
                if dependency not in made.services:
                    raise ComposeError(f"service {name} depends on {dependency}, which is not a service")
                if condition == "service_healthy" and made.services[dependency].healthcheck is None:
                    raise ComposeError(f"service {name} waits for {dependency} to be healthy, which has no healthcheck")
        return made

    def _service(self, name: str, spec: dict[str, Any]) -> LocalService:
        known = {"image", "build", "user", "command", "environment", "ports", "volumes", "stop_signal",
                 "stop_grace_period", "healthcheck", "depends_on"}
        if unknown := set(spec) - known:
            raise ComposeError(f"service {name}: the local run does not map {sorted(unknown)}")
        built = "build" in spec
        if not built and spec["image"] not in self.local.images:
            raise ComposeError(f"service {name}: no local program for image {spec['image']}")
        user = spec.get("user")
        if user not in (None, "postgres"):
            raise ComposeError(f"service {name}: user {user!r} is not mapped (postgres is the server user)")
        own = self.local.root / "containers" / name
        (pgharness.make_server_dir if user else Path.mkdir)(own)

        mounts: list[tuple[str, Path]] = []
        for mount in spec.get("volumes", []):
            volume, target, *_ = mount.split(":")
            if volume not in (self.compose.get("volumes") or {}):
                raise ComposeError(f"service {name}: only named volumes are mapped, not {mount!r}")
            mounts.append((target, self.local.root / "volumes" / volume))
        mounts.sort(key=lambda mounted: len(mounted[0]), reverse=True)

        def local_path(path: str) -> str:
            for prefix in self.local.same_paths:
                if path.startswith(prefix):
                    return path
            for target, directory in mounts:
                if path == target or path.startswith(target.rstrip("/") + "/"):
                    return str(directory / os.path.relpath(path, target))
            if built:
                for prefix, local in sorted(self.local.image_paths.items(), key=lambda item: -len(item[0])):
                    if path == prefix or path.startswith(prefix + "/"):
                        return str(local / os.path.relpath(path, prefix))
            return str(own / path.lstrip("/"))

        def mapped(text: str) -> str:
            return local_path(text) if text.startswith("/") else self.local.host(text)

        command = spec.get("command", [])
        if isinstance(command, str):
            raise ComposeError(f"service {name}: write command as a list (no shell to split it)")
        argv = [mapped(arg) for arg in command]
        if not built:
            argv = [*self.local.images[spec["image"]], *argv]

        environment = spec.get("environment", {})
        if not isinstance(environment, dict):
            raise ComposeError(f"service {name}: write environment as a mapping")
        env = {key: mapped(str(value)) for key, value in environment.items()}
        base = {"PATH": self.local.image_path_variable} if built else {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        # Each container's own /run: agents (pitrkit/wal/agent_client.py) never shared.
        run = own / "run"
        (pgharness.make_server_dir if user else Path.mkdir)(run)
        env = pgharness.server_env({**base, "XDG_RUNTIME_DIR": str(run), **env}) if user else {
            **base, "HOME": str(own), "XDG_RUNTIME_DIR": str(run), **env}

        healthcheck, deadline = None, 0.0
        if check := spec.get("healthcheck"):
            test = check["test"]
            if not isinstance(test, list) or test[0] != "CMD":
                raise ComposeError(f"service {name}: healthcheck test must be [CMD, ...], not {test!r}")
            healthcheck = [mapped(arg) for arg in test[1:]]
            deadline = (seconds(check.get("interval", "30s")) * check.get("retries", 3)
                        + seconds(check.get("start_period", 0)))

        depends = spec.get("depends_on", {})
        if isinstance(depends, list):
            depends = {service: {"condition": "service_started"} for service in depends}
        conditions = {service: how.get("condition", "service_started") for service, how in depends.items()}
        for service, condition in conditions.items():
            if condition not in ("service_started", "service_healthy"):
                raise ComposeError(f"service {name}: depends_on {service} condition {condition} is not mapped")

        ports = []
        for port in spec.get("ports", []):
            # [host_ip:]published:target; a port range or protocol is not mapped.
            published, target = str(port).split(":")[-2:]
            if published != target or not target.isdigit():
                raise ComposeError(f"service {name}: port {port!r}: publish a port as itself (variables move both)")
            ports.append(int(target))

        return LocalService(
            name=name, argv=argv, env=env, as_server_user=user is not None, healthcheck=healthcheck,
            health_deadline=deadline, depends_on=conditions, ports=ports,
            stop_signal=signal.Signals[spec.get("stop_signal", "SIGTERM")],
            stop_grace=seconds(spec.get("stop_grace_period", "10s")),
            log=self.local.root / "logs" / f"{name}.log", mapped=mapped)

    def start_order(self) -> list[str]:
        """The services, each after everything it depends on (compose's order)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise ComposeError(f"depends_on has a cycle through {name}")
            visiting.add(name)
            for dependency in self.services[name].depends_on:
                visit(dependency)
            order.append(name)
        for name in self.services:
            visit(name)
        return order

    @contextmanager
    def up(self) -> Iterator[Topology]:
        """Every service started in order, each dependency's condition met first; then
        every healthcheck passing and every published port listened on. Afterwards, all
        stopped in reverse order."""
        started: list[LocalService] = []
        try:
            for name in self.start_order():
                service = self.services[name]
                for dependency, condition in service.depends_on.items():
                    if condition == "service_healthy":
                        self.wait_healthy(self.services[dependency])
                self._start(service)
                started.append(service)
            for service in started:
                if service.healthcheck is not None:
                    self.wait_healthy(service)
                for port in service.ports:
                    pgharness.wait_for(lambda port=port: _listening(port), 30, interval=0.1,
                                       what=f"{service.name} to listen on port {port}")
            yield self
        finally:
            for service in reversed(started):
                self._stop(service)

    def _start(self, service: LocalService) -> None:
        user = pgharness.server_user()
        drop: dict[str, Any] = {}
        if service.as_server_user and user.switch:
            drop = {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
        with open(service.log, "ab") as log:
            service.process = subprocess.Popen(service.argv, cwd="/", env=service.env, stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=log, **drop)

    def wait_healthy(self, service: LocalService) -> None:
        """Until its healthcheck passes; the service must keep running meanwhile."""
        if service.healthcheck is None:
            raise ComposeError(f"{service.name} has no healthcheck to wait for")

        def healthy() -> bool:
            process = service.process
            assert process is not None and process.poll() is None, (
                f"{service.name} exited {process and process.returncode}:\n{service.logged()}")
            return service.run(service.healthcheck or [], timeout=30).returncode == 0
        pgharness.wait_for(healthy, service.health_deadline, interval=0.2,
                           what=f"{service.name} to be healthy\n{service.logged()}")

    def _stop(self, service: LocalService) -> None:
        process = service.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(service.stop_signal)
            try:
                process.wait(service.stop_grace)
            except subprocess.TimeoutExpired:
                process.kill()  # as compose does after stop_grace_period
                process.wait()
        service.returncode = process.returncode
        # What the service started and left running (archive_command's pitrkit agent)
        # ends with it, as with its container: every process with its own /run.
        # Again until none is left: one may start a child (the agent's time indexer)
        # between the look and the kill.
        mark = f"XDG_RUNTIME_DIR={service.env['XDG_RUNTIME_DIR']}".encode()
        pgharness.wait_for(lambda: not _killed(_pids_with_environment(mark)), 30, interval=0.1,
                           what=f"the processes {service.name} left to end")


def _killed(pids: list[int]) -> list[int]:
    """SIGKILL each of pids; those that were still there."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _pids_with_environment(entry: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as file:
                if entry in file.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
