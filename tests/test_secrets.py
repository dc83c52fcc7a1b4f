"""Known secrets planted in the environment and in configuration files never appear in
any file trackport writes or any line it prints, whether transfers succeed or fail."""
from __future__ import annotations

import base64
import subprocess

from servers import ADMIN_PASSWORD, ADMIN_USER

PLANTED = {
    "MLFLOW_TRACKING_TOKEN": "tok-SECRET-planted-1",
    "DATABRICKS_TOKEN": "dapi-SECRET-planted-2",
    "AWS_SECRET_ACCESS_KEY": "aws-SECRET-planted-3",
}
CREDENTIALS_FILE_PASSWORD = "cred-SECRET-planted-4"
DATABRICKSCFG_TOKEN = "dapi-SECRET-planted-5"
WRONG_PASSWORD = "wrong-SECRET-planted-6"


def _secrets() -> list[str]:
    values = [*PLANTED.values(), CREDENTIALS_FILE_PASSWORD, DATABRICKSCFG_TOKEN, WRONG_PASSWORD, ADMIN_PASSWORD]
    for user, password in ((ADMIN_USER, ADMIN_PASSWORD), (ADMIN_USER, WRONG_PASSWORD)):
        values.append(base64.b64encode(f"{user}:{password}".encode()).decode())  # a Basic auth header
    return values


def test_no_secret_in_any_file_or_output(auth_server, sample_bundle, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {ADMIN_USER}\nmlflow_tracking_password = {CREDENTIALS_FILE_PASSWORD}\n"
    )
    (home / ".databrickscfg").write_text(f"[DEFAULT]\nhost = {auth_server.url}\ntoken = {DATABRICKSCFG_TOKEN}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TRACKPORT_HOME", str(work / "trackport-home"))
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)

    outputs = []

    def run(*args: str, env: dict | None = None) -> int:
        import os

        result = subprocess.run(["trackport", *args], capture_output=True, text=True, timeout=300,
                                env={**os.environ, **(env or {})}, cwd=work)
        outputs.append(result.stdout + result.stderr)
        return result.returncode

    experiment = ["--experiment", "trackport sample b", "--include-deleted"]
    assert run("import", str(sample_bundle), auth_server.url, *experiment) == 0
    assert run("export", auth_server.url, str(work / "exported"), *experiment) == 0
    assert run("bundle", "verify", str(work / "exported")) == 0
    assert run("status", auth_server.url) == 0
    assert run("copy", auth_server.url, f"sqlite:///{work / 'copy' / 'mlflow.db'}", *experiment) == 0
    # Failures: a wrong password for the target side only, a refused Databricks token.
    assert run("import", str(sample_bundle), auth_server.url, *experiment,
               env={"TRACKPORT_TARGET_MLFLOW_TRACKING_PASSWORD": WRONG_PASSWORD}) == 5
    assert run("export", "databricks", str(work / "never")) == 5
    assert run("export", auth_server.url.replace("http://", f"http://{ADMIN_USER}:{ADMIN_PASSWORD}@"),
               str(work / "never2")) == 3

    written = [p for p in work.rglob("*") if p.is_file()]
    assert len(written) > 10  # bundles, ledgers, id maps, a sqlite store
    for secret in _secrets():
        for path in written:
            assert secret.encode() not in path.read_bytes(), (secret, path)
        for output in outputs:
            assert secret not in output, (secret, output)
