"""Where an account's login state lives on disk, under <data_dir>/xiaomi/<user id>/.

- `device_id`: the login device id, created once and then only ever read. Xiaomi ties a login to
  it; a new one looks like a new phone and triggers SMS verification (the loop other clients fall
  into by regenerating it after each error). Nothing in this package deletes or rewrites it.
- `tokens.json` (mode 0600): passToken and the per-service (ssecurity, serviceToken) pairs, so a
  restart reuses them without logging in. Replaced atomically; never deleted on errors.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from server.xiaomi.wire import new_login_device_id

log = logging.getLogger("server.xiaomi")


@dataclass
class ServiceToken:
    ssecurity: str
    service_token: str
    obtained_at: float = 0.0


@dataclass
class AccountTokens:
    user_id: str
    pass_token: str = ""
    c_user_id: str = ""
    services: dict[str, ServiceToken] = field(default_factory=dict)


class AccountStore:
    def __init__(self, data_dir: Path, user_id: str) -> None:
        self.user_id = user_id
        self.folder = data_dir / "xiaomi" / user_id
        self.device_id_file = self.folder / "device_id"
        self.tokens_file = self.folder / "tokens.json"

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.folder, 0o700)
        except OSError:
            pass

    def device_id(self) -> str:
        """The stored login device id; created (once) if there is none yet."""
        try:
            existing = self.device_id_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        self._ensure_folder()
        new = new_login_device_id()
        # O_EXCL: two processes starting at once cannot both create one; the loser reads the winner's.
        try:
            fd = os.open(self.device_id_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.device_id_file.read_text(encoding="utf-8").strip() or new
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new + "\n")
        log.info("Xiaomi account %s: created login device id %s (kept in %s)", self.user_id, new,
                 self.device_id_file)
        return new

    def load_tokens(self) -> AccountTokens | None:
        try:
            raw = self.tokens_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            services = {sid: ServiceToken(**value) for sid, value in data.get("services", {}).items()}
            tokens = AccountTokens(user_id=str(data["user_id"]), pass_token=str(data.get("pass_token", "")),
                                   c_user_id=str(data.get("c_user_id", "")), services=services)
        except (ValueError, KeyError, TypeError) as exc:
            # Keep the unreadable file for the user to look at; a fresh login writes a new one.
            kept = self.tokens_file.with_name(f"tokens.unreadable-{int(time.time())}.json")
            self.tokens_file.replace(kept)
            log.warning("Xiaomi account %s: %s is unreadable (%s); kept as %s, logging in again",
                        self.user_id, self.tokens_file, exc, kept.name)
            return None
        if tokens.user_id != self.user_id:
            log.warning("Xiaomi account %s: %s belongs to account %s; ignoring it", self.user_id,
                        self.tokens_file, tokens.user_id)
            return None
        return tokens

    def save_tokens(self, tokens: AccountTokens) -> None:
        self._ensure_folder()
        tmp = self.tokens_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(tokens), f, indent=2, ensure_ascii=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.tokens_file)
