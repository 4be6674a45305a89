"""A SoftHSM2 token for tests: one token directory per test session.

SoftHSM2 reads its configuration when the PKCS#11 library is first loaded in a
process, so the session sets ``SOFTHSM2_CONF`` before any test loads it, and
node processes inherit the same environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN = "kyodo-test"
PIN_VAR = "KYODO_TEST_HSM_PIN"


def softhsm_available() -> bool:
    """Whether SoftHSM2 (Debian's softhsm2, installed by .ci/run) is on this machine."""
    return Path(MODULE).exists() and shutil.which("softhsm2-util") is not None


def init_token(base: Path) -> None:
    """Create a token directory under ``base``, point SoftHSM2 at it, initialise the
    token with a user PIN exported in ``PIN_VAR`` (never written into a config)."""
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ[PIN_VAR] = "4711-kyodo"
    subprocess.run(
        [
            "softhsm2-util", "--init-token", "--free", "--label", TOKEN,
            "--so-pin", "so-secret-1", "--pin", os.environ[PIN_VAR],
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
