"""The policy in force, swapped atomically; a bad update is rejected and the last good policy stays."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from extender.core.bounds import MAX_POLICY_BYTES
from extender.core.policy import Policy, PolicyError, load_policy_text, parse_policy

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, policy: Policy | None = None, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._policy = policy or parse_policy({})
        self._lock = threading.Lock()
        self._last_text: str | None = None
        self.reloads: Counter[str] = Counter({"applied": 0, "rejected": 0})  # result -> count
        self.last_error: str | None = None
        self._listeners: list[Callable[[Policy], None]] = []
        self._watcher: threading.Thread | None = None
        self.watch_failures = 0  # polls that raised (the watcher logged them and went on)

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyStore:
        """Load the file now; a bad file at start-up is fatal (there is no last good policy)."""
        try:
            text = Path(path).read_bytes()[:MAX_POLICY_BYTES + 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(str(path), [("(file)", None, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
                                          ]) from None
        store = cls(load_policy_text(text, str(path)), path)
        store._last_text = text
        return store

    @property
    def current(self) -> Policy:
        return self._policy  # a single reference read: atomic, so every request sees one whole policy

    def on_change(self, listener: Callable[[Policy], None]) -> None:
        self._listeners.append(listener)

    def update_text(self, text: str, source: str = "<policy>") -> bool:
        """Apply a new policy document. Returns True if it changed the policy in force."""
        with self._lock:
            if text == self._last_text:
                return False
            try:
                new = load_policy_text(text, source)
            except PolicyError as exc:
                self.reloads["rejected"] += 1
                self.last_error = str(exc)
                self._last_text = text  # do not log the same bad file every poll
                log.error("policy reload rejected; keeping policy %s\n%s", self._policy.version, exc)
                return False
            self._last_text = text
            self.last_error = None
            if new.version == self._policy.version:
                return False
            # Listeners (the ledger's burst region and overcommit) adopt the new policy before it is
            # published, so whoever sees the new version also sees the state that goes with it.
            for listener in self._listeners:
                listener(new)
            self._policy = new
            self.reloads["applied"] += 1
            log.info("policy %s applied from %s", new.version, source)
        return True

    def reload(self) -> bool:
        """Re-read the policy file (if there is one). Unreadable files count as rejected; a file that
        stays unreadable in the same way is counted and logged once."""
        if self.path is None:
            return False
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_POLICY_BYTES + 1)
            text = raw.decode("utf-8")
        except OSError as exc:
            return self._unreadable(f"cannot read {self.path}: {exc.strerror}")
        except UnicodeDecodeError as exc:
            return self._unreadable(f"{self.path} is not UTF-8 text: {exc.reason} at byte {exc.start}")
        return self.update_text(text, str(self.path))

    def _unreadable(self, error: str) -> bool:
        with self._lock:
            if self.last_error == error:
                return False
            self.reloads["rejected"] += 1
            self.last_error = error
            self._last_text = None  # the file's next readable text is applied even if it is the old one
        log.error("policy reload: %s", error)
        return False

    def watch(self, interval: float = 2.0) -> threading.Thread:
        """Poll the file in a daemon thread. Polling (not inotify) because a ConfigMap volume
        swaps a symlink, which inotify watchers on the file itself miss. A poll that fails in any
        way is counted and the next poll goes on; should the thread die anyway, `watching` turns
        false (the server's /readyz then fails)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.reload()
                except Exception:  # never let the watcher die
                    self.watch_failures += 1
                    log.exception("policy watcher")

        t = threading.Thread(target=loop, name="policy-watch", daemon=True)
        t.stop = stop  # type: ignore[attr-defined]
        self._watcher = t
        t.start()
        return t

    @property
    def watching(self) -> bool | None:
        """None if no file is watched, else whether the watcher thread is alive (or was stopped on purpose)."""
        t = self._watcher
        if t is None:
            return None
        return t.is_alive() or t.stop.is_set()  # type: ignore[attr-defined]
