# Copyright (c) monai_msgldm contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""A real ``monailabel start_server`` of the MSG-LDM app on 127.0.0.1, for the server tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["APP_DIR", "LabelServer"]

APP_DIR = Path(__file__).resolve().parents[3] / "monai_msgldm" / "apps" / "monailabel"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabelServer:
    """Starts the app on a free port with ``--conf bundle <bundle>`` and waits for ``/info/`` (:attr:`info`);
    :meth:`stop` ends it (the whole process group). The server's output goes to ``<tmp>/server.log``."""

    def __init__(self, bundle: str, studies: str, tmp: str, timeout: float = 240.0) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = open(os.path.join(tmp, "server.log"), "w+")
        cmd = [
            sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
            "--studies", studies, "--conf", "bundle", bundle,
            "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_SESSION_PATH": os.path.join(tmp, "sessions")}
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.info = self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def _wait(self, timeout: float) -> dict:
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the MONAI Label server exited early:\n{self._tail()}")
            try:
                response = requests.get(f"{self.url}/info/", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the MONAI Label server did not answer within {timeout:.0f} s:\n{self._tail()}")

    def infer(self, image: str, params: dict | None = None, output: str = "image"):
        """``POST /infer/msgldm`` for the study ``image`` with the request ``params``."""
        import requests

        return requests.post(
            f"{self.url}/infer/msgldm",
            params={"image": image, "output": output},
            data={"params": json.dumps(params or {})},
            timeout=300,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()
