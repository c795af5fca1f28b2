"""Throwaway real servers for tests: MariaDB and RabbitMQ on loopback, each with its own data
dir, ports and node name, started and stopped by fixtures (never the system instances).

Both support stop()/start() on the same data dir so reliability tests can restart them."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # the checkout under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc (robust to other load on the machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check, timeout: float = 30, what: str = "condition", proc=None) -> None:
    """Poll `check` until it returns true; an exception it raises counts as "not yet" (a server
    still starting) and is reported if the time runs out, with `proc`'s output when given."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        time.sleep(0.05)
    detail = f": {last!r}" if last is not None else ""
    if proc is not None:
        detail += (f"\nstdout:\n{Path(proc.log_path).read_text()}"
                   f"\nstderr:\n{Path(proc.err_path).read_text()[-3000:]}")
    raise AssertionError(f"timed out waiting for {what} after {timeout}s{detail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class MariaDB:
    user, password = "photo", "photo-test"

    def __init__(self, base: Path):
        self.base = Path(base)
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = None

    def url(self, database: str = "photo") -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "MariaDB":
        self.log = self.log or open(self.base / "mysqld.log", "ab")
        fresh = not self.datadir.exists()
        if fresh:
            self.datadir.mkdir(parents=True)
            subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                            "--user=" + _user(), "--auth-root-authentication-method=socket",
                            "--skip-test-db", "--skip-name-resolve"],
                           check=True, stdout=self.log, stderr=self.log)
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=" + _user(),
             "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=500",
             "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin", f"--pid-file={self.base}/mysqld.pid",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"],
            stdout=self.log, stderr=self.log)
        wait_for(lambda: self.socket.exists() and _port_open(self.port), 60, "MariaDB")
        if fresh:
            self.sql(f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}';"
                     f"GRANT ALL ON *.* TO '{self.user}'@'%'; FLUSH PRIVILEGES;")
        return self

    def sql(self, statements: str) -> str:
        return subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-N", "-e", statements],
                              check=True, capture_output=True, text=True).stdout

    def create_database(self, name: str) -> str:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4;")
        return self.url(name)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None
        _close_log(self)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
        _close_log(self)

    def restart(self) -> None:
        self.stop()
        self.start()


class RabbitMQ:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"photo-test-{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        self.log = None
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        conf = self.base / "rabbitmq.conf"
        conf.write_text("loopback_users = none\nlisteners.tcp.1 = 127.0.0.1:%d\n"
                        "management_agent.disable_metrics_collector = true\n"
                        "vm_memory_high_watermark.absolute = 1GB\ndisk_free_limit.absolute = 50MB\n"
                        % self.port)
        (self.base / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict:
        return {**os.environ,
                "HOME": str(self.base / "home"),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
                }

    def start(self) -> "RabbitMQ":
        self.log = self.log or open(self.base / "rabbitmq.out", "ab")
        self.proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=self.env(), stdout=self.log, stdin=subprocess.DEVNULL,
                                     stderr=self.log, start_new_session=True)
        wait_for(self._amqp_ready, 120, "RabbitMQ")
        return self

    def _amqp_ready(self) -> bool:
        import pika
        pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")).close()
        return True

    def ctl(self, *args: str) -> str:
        return subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.node, *args], env=self.env(),
                              check=True, capture_output=True, text=True).stdout

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.ctl("stop")
            except subprocess.CalledProcessError:
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self.proc = None
        _close_log(self)

    def restart(self) -> None:
        self.stop()
        self.start()


def _close_log(server) -> None:
    """The server's output file, opened again by its next start()."""
    if server.log:
        server.log.close()
        server.log = None


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def have(*commands: str) -> bool:
    return all(shutil.which(c) for c in commands)
