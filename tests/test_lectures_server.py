"""Smoke test of the README's lecture command as a real server.

Starts JupyterLab headless on a free loopback port with the same arguments as
``make lectures``, waits until it answers, lists ``notebooks/student/`` through the Jupyter
server's REST API, starts a kernel, executes one cell over the kernel's websocket
channel, and shuts everything down.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, token: str, method: str = "GET", body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"token {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read()
    return json.loads(payload) if payload else {}


@pytest.fixture
def lab_server():
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "notebooks/student/",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.port_retries=0",
    ]
    if os.geteuid() == 0:  # as `make lectures` does in a root container
        command.append("--allow-root")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited early:\n{process.stderr.read()[-3000:]}")
            try:
                _request(f"{base}/api/status", token)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("jupyter lab did not answer within the startup timeout")
                time.sleep(0.5)
        yield base, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _execute_over_websocket(base: str, token: str, kernel_id: str, code: str) -> str:
    """Send an execute_request on the kernel's channels websocket; return its stdout."""
    from tornado import ioloop, websocket
    from tornado.httpclient import HTTPRequest

    async def run() -> str:
        url = f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels"
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        connection = await websocket.websocket_connect(request)
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "test",
                "session": uuid.uuid4().hex,
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "content": {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
            },
        }
        await connection.write_message(json.dumps(message))
        stdout = []
        while True:
            reply = json.loads(await connection.read_message())
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = reply["msg_type"]
            if kind == "stream":
                stdout.append(reply["content"]["text"])
            elif kind == "error":
                raise AssertionError(reply["content"]["evalue"])
            elif kind == "status" and reply["content"]["execution_state"] == "idle":
                connection.close()
                return "".join(stdout)

    return ioloop.IOLoop.current().run_sync(run, timeout=60)


@pytest.mark.slow
def test_lecture_server_lists_notebooks_and_runs_a_cell(lab_server):
    base, token = lab_server
    listing = _request(f"{base}/api/contents", token)
    names = {entry["name"] for entry in listing["content"]}
    assert {"00_setup.ipynb", "08_the_transformer.ipynb"} <= names  # the student editions

    kernel = _request(f"{base}/api/kernels", token, method="POST", body={"name": "python3"})
    try:
        output = _execute_over_websocket(
            base, token, kernel["id"], "import decoding_gpt; print(6 * 7, decoding_gpt.__version__)"
        )
        assert output.split() == ["42", "0.1.0"]
    finally:
        _request(f"{base}/api/kernels/{kernel['id']}", token, method="DELETE")
