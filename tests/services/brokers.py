"""Message brokers: RabbitMQ (own epmd; with its MQTT plugin for 3.1.1), Mosquitto (MQTT 5),
NATS and a one-node Kafka 4."""

from __future__ import annotations

import base64
import os
import pwd
import subprocess
import uuid
from pathlib import Path
from typing import ClassVar

from tests.services.base import (
    KAFKA_LIBS,
    RABBITMQ_BIN,
    SERVICES_DIR,
    Service,
    ServiceError,
    free_port,
    http_ok,
    port_open,
    which,
)

__all__ = ["KafkaServer", "MosquittoServer", "NatsServer", "RabbitMQMqttServer", "RabbitMQServer"]


# -- RabbitMQ -------------------------------------------------------------------------------


class RabbitMQServer(Service):
    """RabbitMQ with its own `epmd` on a free port (else Erlang leaves a daemon behind).

    `RUNNING_UNDER_SYSTEMD` makes the start script exec the Erlang VM, so our PID is the
    broker's: SIGTERM is its clean stop, SIGKILL and SIGSTOP reach the broker itself. The CLI
    tools are called from /usr/lib/rabbitmq/bin (/usr/sbin's switch to user rabbitmq).
    """

    name = "rabbitmq"
    binaries: ClassVar[tuple[str | Path, ...]] = (RABBITMQ_BIN / "rabbitmq-server", "epmd")
    start_timeout = 90.0

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.epmd_port = free_port()
        self.epmd: subprocess.Popen[bytes] | None = None
        self._awaited = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RUNNING_UNDER_SYSTEMD": "1",
        }

    def prepare(self) -> None:
        plugins = self.dir / "enabled_plugins"
        if not plugins.exists():
            plugins.write_text("[].\n")
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                ["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.helpers.append(self.epmd)
        self._awaited = False

    def argv(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`rabbitmqctl ARGS` against this node (same environment as the broker)."""
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        if not self._awaited:
            self._awaited = self.ctl("-q", "await_startup").returncode == 0
        return self._awaited


class RabbitMQMqttServer(RabbitMQServer):
    """RabbitMQ with its MQTT plugin (MQTT 3.1.1 only in 3.10) on a loopback port of its own.

    The plugin and its listener are configured before the start (`enabled_plugins`, and
    `mqtt.listeners.tcp.default` in a `rabbitmq.conf`): enabled on a running node it binds
    `[::]:1883`. Anonymous MQTT clients act as `guest` (allowed from loopback). Ready when
    the node has started and the MQTT port answers.
    """

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.mqtt_port = free_port()

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf")}

    def prepare(self) -> None:
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
        )
        super().prepare()

    def ready(self) -> bool:
        return super().ready() and port_open(self.mqtt_port)


# -- Mosquitto --------------------------------------------------------------------------------


class MosquittoServer(Service):
    """Mosquitto 2 (MQTT 3.1.1 and 5), anonymous clients, no persistence unless asked."""

    name = "mosquitto"
    binaries: ClassVar[tuple[str | Path, ...]] = ("mosquitto",)

    def __init__(self, *lines: str, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.lines = list(lines)  # extra mosquitto.conf lines

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        # As root Mosquitto drops to user "mosquitto" unless told to stay who it is.
        user = pwd.getpwuid(os.geteuid()).pw_name
        config = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            f"persistence_location {self.dir}/",
            f"user {user}",
            *self.lines,
        ]
        (self.dir / "mosquitto.conf").write_text("\n".join(config) + "\n")

    def argv(self) -> list[str]:
        return [which("mosquitto") or "mosquitto", "-c", str(self.dir / "mosquitto.conf")]


# -- NATS -------------------------------------------------------------------------------------


class NatsServer(Service):
    """nats-server from a config file (2.9 has no `--http_host`); JetStream on request."""

    name = "nats"
    binaries: ClassVar[tuple[str | Path, ...]] = ("nats-server",)

    def __init__(
        self, *, jetstream: bool = False, port: int | None = None, directory: Path | None = None
    ) -> None:
        super().__init__(port, directory)
        self.monitor_port = free_port()
        self.jetstream = jetstream

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        lines = [f"listen: 127.0.0.1:{self.port}", f"http: 127.0.0.1:{self.monitor_port}"]
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.dir}/js" }}')
        (self.dir / "nats.conf").write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [which("nats-server") or "nats-server", "-c", str(self.dir / "nats.conf")]

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz")


# -- Kafka ------------------------------------------------------------------------------------


def _kafka_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints, without a JVM start: 16 random bytes in URL-safe
    base64, never starting with '-' (a command line would read it as an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KafkaServer(Service):
    """One Kafka 4 node in KRaft mode (broker and controller), from the jars that
    scripts/install-services.sh put in $HYBRIDBUS_SERVICES_DIR/kafka/libs.

    The storage is formatted once (`kafka.tools.StorageTool format --standalone`); the broker's
    port opens once it is unfenced. Topics are best created before the first produce (the
    broker creates them on demand, after "unknown topic" warnings to the client).
    """

    name = "kafka"
    binaries: ClassVar[tuple[str | Path, ...]] = ("java", KAFKA_LIBS / "kafka_2.13-4.4.0.jar")
    start_timeout = 90.0

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.controller_port = free_port()

    @property
    def url(self) -> str:
        """The bootstrap servers string."""
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={SERVICES_DIR / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            "-cp", f"{KAFKA_LIBS}/*",
            main, *args,
        ]  # fmt: skip

    def prepare(self) -> None:
        broker = f"127.0.0.1:{self.port}"
        controller = f"127.0.0.1:{self.controller_port}"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        config = self.dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        if (self.dir / "data" / "meta.properties").exists():
            return
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    *("format", "--standalone", "-t", _kafka_cluster_id(), "-c", str(config)),
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise ServiceError(f"kafka storage format failed:\n{self.log_tail()}")

    def argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.dir / "server.properties"))
