"""The policy in force, swapped atomically; a bad update is rejected and the last good policy stays."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

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

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyStore:
        """Load the file now; a bad file at start-up is fatal (there is no last good policy)."""
        text = Path(path).read_text()
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
        """Re-read the policy file (if there is one). Unreadable files count as rejected."""
        if self.path is None:
            return False
        try:
            text = self.path.read_text()
        except OSError as exc:
            with self._lock:
                self.reloads["rejected"] += 1
                self.last_error = f"cannot read {self.path}: {exc.strerror}"
            log.error("policy reload: cannot read %s: %s", self.path, exc.strerror)
            return False
        return self.update_text(text, str(self.path))

    def watch(self, interval: float = 2.0) -> threading.Thread:
        """Poll the file in a daemon thread. Polling (not inotify) because a ConfigMap volume
        swaps a symlink, which inotify watchers on the file itself miss."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.reload()
                except Exception:  # never let the watcher die
                    log.exception("policy watcher")

        t = threading.Thread(target=loop, name="policy-watch", daemon=True)
        t.stop = stop  # type: ignore[attr-defined]
        t.start()
        return t
