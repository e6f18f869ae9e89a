"""Node's socket.io as a fan-out peer: installed from npm by the benchmark itself.

:func:`ensure_installed` runs ``npm install socket.io@4 --no-audit --no-fund`` once into
``$XDG_CACHE_HOME/agentcast-bench/node`` (``~/.cache/...`` by default) and writes the server
script :data:`SERVER_JS` there; the script listens on 127.0.0.1 and a free port with the
WebSocket transport only, prints ``READY <port>``, and serves the same two events as the
python-socketio peer (``subscribe`` joins a room, ``publish`` emits ``m`` to it; both acked).
It exits when its parent does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agentcast.bench.children import BenchError

NPM_PACKAGE = "socket.io@4"
NPM_TIMEOUT = 300.0

SERVER_JS = """\
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const parent = process.ppid;
const server = http.createServer();
const io = new Server(server, { transports: ["websocket"], serveClient: false });
io.on("connection", (socket) => {
  socket.on("subscribe", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(true);
  });
  socket.on("publish", (room, payload, ack) => {
    io.to(room).emit("m", payload);
    if (typeof ack === "function") ack(true);
  });
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write("READY " + server.address().port + "\\n");
});
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 1000).unref();
process.on("SIGTERM", () => process.exit(0));
"""


def cache_dir() -> Path:
    """Where the npm packages and the script live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentcast-bench" / "node"


def ensure_installed(directory: Path | None = None) -> Path:
    """Install socket.io into ``directory`` (default :func:`cache_dir`) unless it is there,
    write the server script; return the script's path. :class:`BenchError` when node or npm
    is missing or the install fails."""
    directory = directory or cache_dir()
    if shutil.which("node") is None:
        raise BenchError("the socketio-node peer needs node on PATH")
    if not (directory / "node_modules" / "socket.io" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError("the socketio-node peer needs npm on PATH to install socket.io")
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            npm,
            "install",
            NPM_PACKAGE,
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(directory),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"npm install {NPM_PACKAGE} took over {NPM_TIMEOUT:g} s") from None
        if done.returncode != 0:
            raise BenchError(f"npm install {NPM_PACKAGE} failed: {done.stderr.strip()[-500:]}")
    script = directory / "fanout-server.js"
    if not script.exists() or script.read_text() != SERVER_JS:
        script.write_text(SERVER_JS)
    return script
