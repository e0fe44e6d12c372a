"""Fault injection for the fault tests: end a command with SIGKILL at a chosen point, as a killed process ends.

Run as `python tests/faultkit.py PLAN.json REPORT.json`. The harness runs the plan's reference run in-process
(the uninterrupted run; it also loads torch, transformers and the models once), then forks one child per further
run: a fresh python spends ~10 s of 2 shared cores importing, and a kill sweep needs dozens of runs. A child
calls the real typer app behind the console script (egmf-extract, egmf-train) with its output in log files, and
dies by SIGKILL where its kill point says: no finally blocks, no flushes, no cleanup.

    plan   {"app": "egmf.extract.cli:app", "logs": DIR, "reference": RUN,
            "scenarios": {NAME: [RUN | {"kill_held": true}, ...]}}      scenarios run one after another
    RUN    {"args": [...], "store": PATH (optional: report whether the run changed its files),
            "keep": PATH (optional: copy the store there after the run, to look at what a kill left),
            "kill": POINT (die there) | "hold": POINT (stop there, holding everything, until "kill_held")}
    POINT  {"at": "put" | "delete", "key": REGEX, "holding": TEXT, "nth": N, "torn": "in_place" | "temp"}
               the N-th write (put) or delete of a Zarr LocalStore key whose path ends with REGEX and, for a
               put, whose bytes contain TEXT; "torn" first writes half the bytes, straight into the key's file
               (what a non-atomic filesystem leaves) or into the store's own temporary file (what zarr leaves)
           {"at": "call" | "return", "target": "module:Qual.name", "match": TEXT, "nth": N, "torn": "half"}
               entering / leaving the N-th call of a function whose path arguments contain TEXT; "torn" cuts
               the file that the matching argument names to half its bytes before dying
    report {"reference": RESULT, "scenarios": {NAME: [RESULT, ...]}}
    RESULT {"status": exit status | "killed" | "held" | "hung", "pid", "stdout", "stderr", "store_changed"}

The tests build plans with put/delete/call/returned, run them with run_plan and compare stores with
assert_same_store.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

CHILD_TIMEOUT_S = 300  # a child that neither exits nor reaches its point in this long counts as hung
HARNESS_TIMEOUT_S = 900


# --- for the tests: plans, the harness as a subprocess, comparing stores ------------------------------------------

def put(key: str, **kw) -> dict:
    return {"at": "put", "key": key, **kw}


def delete(key: str, **kw) -> dict:
    return {"at": "delete", "key": key, **kw}


def call(target: str, **kw) -> dict:
    return {"at": "call", "target": target, **kw}


def returned(target: str, **kw) -> dict:
    return {"at": "return", "target": target, **kw}


def run_plan(plan: dict, workdir: Path) -> dict:
    """Run the harness on plan in a fresh python (torch threads 1, for bit-identical runs); returns the report."""
    workdir = Path(workdir)
    plan = {"logs": str(workdir / "logs"), **plan}
    (workdir / "plan.json").write_text(json.dumps(plan, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(workdir / "plan.json"), str(workdir / "report.json")],
                          env=env, capture_output=True, text=True, timeout=HARNESS_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"fault harness failed (exit {proc.returncode}); logs in {workdir / 'logs'}:\n"
                           + proc.stderr[-3000:])
    return json.loads((workdir / "report.json").read_text())


def assert_same_store(a, b) -> None:
    """Two Cache objects hold the same rows: header fingerprint, done marks, metadata, labels, every array."""
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.done, b.done)
    for col in a.meta:
        np.testing.assert_array_equal(a.meta[col], b.meta[col])
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])
    for m in a.modalities:
        (fa, la), (fb, lb) = a.features(m, np.arange(a.n_rows)), b.features(m, np.arange(b.n_rows))
        np.testing.assert_array_equal(fa, fb, err_msg=f"{m} features differ")
        np.testing.assert_array_equal(la, lb, err_msg=f"{m} lengths differ")
        assert a.problems(m).tolist() == b.problems(m).tolist()


# --- the harness --------------------------------------------------------------------------------------------------

def main(plan_path: str, report_path: str) -> None:
    import tqdm

    tqdm.tqdm.monitor_interval = 0  # no progress-monitor thread: a fork must not inherit a thread holding a lock
    plan = json.loads(Path(plan_path).read_text())
    app, logs = _resolve(plan["app"]), Path(plan["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    report = {"reference": _run_here(app, plan["reference"], logs / "reference"), "scenarios": {}}
    for name, runs in plan["scenarios"].items():
        report["scenarios"][name] = _scenario(app, runs, logs / name)
    Path(report_path).write_text(json.dumps(report, indent=1))


def _owner(target: str) -> tuple[object, str]:
    """The object holding "module:Qual.name" and the attribute's name, e.g. (AdamW class, "step")."""
    module, _, qualname = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = qualname.split(".")
    for p in parents:
        owner = getattr(owner, p)
    return owner, name


def _resolve(target: str):
    return getattr(*_owner(target))


# --- running ------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _output_to(log: Path):
    """Send this process' stdout and stderr (file descriptors 1 and 2) to log.out / log.err."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def _call_app(app, args: list[str]) -> int:
    try:
        app(args=args, prog_name="egmf")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _run_here(app, run: dict, log: Path) -> dict:
    before = _snapshot(run.get("store"))
    with _output_to(log):
        status = _call_app(app, run["args"])
    return _result(status, os.getpid(), log, before, run.get("store"))


def _scenario(app, runs: list[dict], log_dir: Path) -> list[dict]:
    log_dir.mkdir(parents=True, exist_ok=True)
    results, held = [], None
    for i, run in enumerate(runs):
        if run.get("kill_held"):
            os.kill(held, signal.SIGKILL)
            results.append({"status": _wait(held), "pid": held})
            held = None
            continue
        log = log_dir / str(i)
        before = _snapshot(run.get("store"))
        pid, ready = _fork(app, run, log)
        if "hold" in run:
            readable, _, _ = select.select([ready], [], [], CHILD_TIMEOUT_S)
            status = "held" if readable and os.read(ready, 1) else _wait(pid)
            held = pid if status == "held" else None
        else:
            status = _wait(pid)
        os.close(ready)
        results.append(_result(status, pid, log, before, run.get("store")))
        if run.get("keep"):
            shutil.copytree(run["store"], run["keep"])
    if held is not None:
        os.kill(held, signal.SIGKILL)
        _wait(held)
    return results


def _fork(app, run: dict, log: Path) -> tuple[int, int]:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        return pid, ready_r
    os.close(ready_r)
    code = 1
    try:
        with _output_to(log):
            point = run.get("kill") or run.get("hold")
            if point:
                arm(point, _stopper(hold="hold" in run, ready_fd=ready_w))
            try:
                code = _call_app(app, run["args"])
            except BaseException:
                traceback.print_exc()
    finally:
        os._exit(code)  # never return into the harness' own code


def _wait(pid: int) -> int | str:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"signal {os.WTERMSIG(status)}"
    return os.WEXITSTATUS(status)


def _snapshot(store: str | None) -> dict | None:
    """Size and modification time of every file under store (None without a store)."""
    if store is None:
        return None
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(store).rglob("*"))}


def _result(status, pid: int, log: Path, before, store) -> dict:
    return {"status": status, "pid": pid, "stdout": Path(f"{log}.out").read_text(errors="replace"),
            "stderr": Path(f"{log}.err").read_text(errors="replace"),
            "store_changed": None if store is None else _snapshot(store) != before}


# --- kill points --------------------------------------------------------------------------------------------------

def _stopper(hold: bool, ready_fd: int):
    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_to_be_killed():
        os.write(ready_fd, b"!")
        while True:
            time.sleep(3600)

    return wait_to_be_killed if hold else kill


class _Nth:
    """True on the n-th time it is asked, and only then."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def __call__(self) -> bool:
        self.seen += 1
        return self.seen == self.n


def arm(point: dict, stop) -> None:
    """Patch this process so that it calls stop() at point (see the module docstring)."""
    if point["at"] in ("put", "delete"):
        _arm_store(point, stop)
    elif point["at"] in ("call", "return"):
        _arm_call(point, stop)
    else:
        raise ValueError(f"unknown kill point {point['at']!r}: use put, delete, call or return")


def _arm_store(point: dict, stop) -> None:
    import zarr.storage._local as local

    key = re.compile(rf"(?:^|/)(?:{point['key']})$")
    holding = point.get("holding", "").encode()
    nth = _Nth(point.get("nth", 1))
    if point["at"] == "delete":
        delete = local.LocalStore.delete

        async def delete_then_stop(self, k):
            if key.search(k) and nth():
                stop()
            return await delete(self, k)

        local.LocalStore.delete = delete_then_stop
        return
    put = local._put

    def put_then_stop(path, value, exclusive=False):
        data = value.to_bytes()
        if key.search(Path(path).as_posix()) and holding in data and nth():
            half = data[: len(data) // 2]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if point.get("torn") == "in_place":
                Path(path).write_bytes(half)
            elif point.get("torn") == "temp":
                with local._atomic_write(Path(path), "wb") as f:
                    f.write(half)
                    f.flush()
                    stop()
            stop()
        return put(path, value, exclusive=exclusive)

    local._put = put_then_stop


def _arm_call(point: dict, stop) -> None:
    owner, name = _owner(point["target"])
    original = getattr(owner, name)
    match = point.get("match", "")
    nth = _Nth(point.get("nth", 1))

    def matching_path(args, kwargs) -> str | None:
        paths = [os.fspath(a) for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike))]
        return next((p for p in paths if match in p), None) if match else ""

    def wrapper(*args, **kwargs):
        path = matching_path(args, kwargs)
        if path is not None and point["at"] == "call" and nth():
            stop()
        result = original(*args, **kwargs)
        if path is not None and point["at"] == "return" and nth():
            if point.get("torn") == "half":
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])
            stop()
        return result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    main(*sys.argv[1:])
