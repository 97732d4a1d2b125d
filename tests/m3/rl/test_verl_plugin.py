"""The `verl.plugins` entry point registers our pieces in any process that merely imports verl."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from m3.rl.verl_plugin import register_all

PROBE = (
    "import sys, verl\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R\n"
    "fn = R.get('spar')\n"
    "print(fn.__module__ if fn else None, 'm3.rl.verl_plugin' in sys.modules)\n"
)


# verl's first import may come from inside one of our modules (the local server imports verl's
# TokenOutput): the hook then imports the agent loop while that module is half-initialised, so
# the agent loop must not import from it (a circular import only logged as a failed registration)
PROBE_FROM_OURS = (
    "import m3.rl.local_server\n"
    "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as R\n"
    "print('m3_consultation' in R)\n"
)


def _probe(plugins: str, probe: str = PROBE) -> subprocess.Popen:
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": plugins, "TORCH_COMPILE_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_import_verl_in_a_fresh_process_registers_spar():
    # both probes at once (each pays verl's ~5 s import); "none" is the control: without the hook, no spar
    with_hook, without_hook = _probe("auto"), _probe("none")
    out_with, err_with = with_hook.communicate(timeout=120)
    out_without, err_without = without_hook.communicate(timeout=120)
    assert with_hook.returncode == 0, err_with
    assert without_hook.returncode == 0, err_without
    assert out_with.split() == ["m3.rl.spar", "True"], err_with
    assert out_without.split() == ["None", "False"]


def test_verl_first_imported_by_our_server_registers_the_agent_loops():
    proc = _probe("auto", PROBE_FROM_OURS)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "failed" not in err, err
    assert out.split() == ["True"], err


def test_a_failing_registration_is_logged_and_does_not_stop_the_others(caplog):
    ran = []

    def broken_step():
        raise RuntimeError("agent loop module missing")

    def good_step():
        ran.append("good")

    with caplog.at_level(logging.WARNING, logger="m3.rl.verl_plugin"):
        failed = register_all((broken_step, good_step))
    assert failed == ["broken_step"]
    assert ran == ["good"]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "broken_step" in record.getMessage()
    assert "agent loop module missing" in str(record.exc_info[1])
