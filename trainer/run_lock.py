"""One writer per model_dir: the chief's lock file and stale-save clean-up.

A training run's chief writes `model_dir/trainer.lock` (JSON: pid, host,
start time, heartbeat) before it builds anything and removes it when the run
ends, also on an exception. A second trainer on the same model_dir finds the
lock and refuses, naming the holder. A lock is stale, and taken over with a
warning, when its process is gone (same host, pid not running, or our own pid
left by an earlier process, e.g. a restarted container) or when its heartbeat
is older than `max_age_s`: the holder refreshes the heartbeat from a daemon
thread, so a long run keeps its lock and a crashed run on another host frees
it after `max_age_s`.

Checkpoint saves write into `<prefix>_temp/` (TF 2.20; older versions
`<prefix>_temp_<hex>/`) and rename the files on success; a save interrupted
by a kill leaves that folder behind. `remove_stale_temp_dirs` deletes them.
"""

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time
from typing import Dict
from typing import List
from typing import Optional

from absl import logging

LOCK_FILE = "trainer.lock"
DEFAULT_MAX_AGE_S = 24 * 3600.0
_TEMP_DIR = re.compile(r".+-[0-9]+_temp(_[0-9a-fA-F]+)?$")
# Lock files this process holds (a lock naming our pid but not listed here
# was left by an earlier process that had the same pid).
_HELD = set()


class LockHeldError(RuntimeError):
  """Another live trainer holds the model_dir; the message names it."""


def _iso(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(holder: Dict) -> str:
  """'pid P on host H since T' for a lock's contents."""
  start = holder.get("start_time")
  since = _iso(start) if isinstance(start, (int, float)) else "?"
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
          f"since {since}")


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's live process.
    return True
  return True


def _stale_reason(holder: Dict, path: str, max_age_s: float,
                  now: float) -> Optional[str]:
  """Why the lock can be taken over, or None while its holder lives."""
  pid, host = holder.get("pid"), holder.get("host")
  if not isinstance(pid, int) or not isinstance(host, str):
    return "unreadable lock contents"
  if host == socket.gethostname():
    if pid == os.getpid() and path not in _HELD:
      return "left by an earlier process with this pid"
    if pid != os.getpid() and not _pid_running(pid):
      return "its process is no longer running"
  beat = holder.get("heartbeat", holder.get("start_time"))
  if isinstance(beat, (int, float)) and now - beat > max_age_s:
    return (f"no heartbeat for {now - beat:.0f} s (more than "
            f"{max_age_s:.0f} s)")
  return None


@contextlib.contextmanager
def _guard(model_dir: str):
  """Serialises lock checks of concurrent starts (flock on the folder)."""
  fd = os.open(model_dir, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # Closing releases the flock.


def _read(path: str) -> Optional[Dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # Unreadable: stale.


def _write(path: str, contents: Dict) -> None:
  temp = f"{path}.{os.getpid()}.tmp"
  with open(temp, "w") as f:
    json.dump(contents, f)
  os.replace(temp, path)


class RunLock:
  """The held lock of one model_dir; `release()` (or `with`) frees it."""

  def __init__(self, path: str, contents: Dict, heartbeat_s: float):
    self.path = path
    self.contents = contents
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,),
                                    name="model_dir_lock", daemon=True)
    self._thread.start()

  def _beat(self, interval_s: float) -> None:
    while not self._stop.wait(interval_s):
      if _read(self.path) != self.contents:
        logging.warning("Lock %s was taken by another trainer", self.path)
        return
      self.contents = dict(self.contents, heartbeat=time.time())
      _write(self.path, self.contents)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still ours."""
    self._stop.set()
    self._thread.join()
    _HELD.discard(self.path)
    if _read(self.path) == self.contents:
      os.remove(self.path)

  def __enter__(self):
    return self

  def __exit__(self, *unused_exc):
    self.release()


def acquire(model_dir: str, max_age_s: float = DEFAULT_MAX_AGE_S) -> RunLock:
  """Takes model_dir's lock; raises LockHeldError naming a live holder."""
  path = os.path.join(model_dir, LOCK_FILE)
  now = time.time()
  with _guard(model_dir):
    holder = _read(path)
    if holder is not None:
      reason = _stale_reason(holder, path, max_age_s, now)
      if reason is None:
        raise LockHeldError(
            f"model_dir {model_dir} is in use by another trainer "
            f"({describe(holder)}; lock file {path}). Stop that run, or "
            "remove the lock file if that run is gone.")
      logging.warning("Taking over the stale lock %s of %s: %s", path,
                      describe(holder), reason)
    contents = {"pid": os.getpid(), "host": socket.gethostname(),
                "start_time": now, "started": _iso(now), "heartbeat": now}
    _write(path, contents)
    _HELD.add(path)
  logging.info("Locked %s (%s)", model_dir, describe(contents))
  return RunLock(path, contents, heartbeat_s=min(600.0, max_age_s / 4))


def remove_stale_temp_dirs(model_dir: str) -> List[str]:
  """Removes `*_temp*` folders of interrupted saves; returns their paths."""
  removed = []
  for name in sorted(os.listdir(model_dir)):
    path = os.path.join(model_dir, name)
    if _TEMP_DIR.match(name) and os.path.isdir(path):
      logging.warning("Removing %s, left by an interrupted checkpoint save",
                      path)
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed
