"""verl plugin: registers M3's pieces in every process that imports verl.

pyproject.toml declares `[project.entry-points."verl.plugins"] m3 = "m3.rl.verl_plugin"`; verl imports
that group at the end of `import verl`, in the driver and in every Ray worker, so the registries
(module-level dicts) are filled wherever a trainer, agent loop or actor looks names up. Importing our
modules in the launcher alone would not reach the workers.

verl catches a plugin's load error and logs it at DEBUG, which hides it. So each registration step
runs on its own and a failure is logged at WARNING with its traceback; the other steps still run.
`VERL_USE_EXTERNAL_PLUGINS=none` switches all plugins off.

Registered now: advantage estimators "spar" and "spar_global" (the global-penalty ablation, m3.rl.spar), the "m3_consultation" agent loop and the
"m3_single_turn" loop (single-turn rows in SPAR's reward layout, m3.rl.agent_loop). The stage-3 loss
`m3_mopd` is registered by its own entry point (`stage3_mopd.verl_loss`): m3/ never imports a stage.

Check: `python -c "import verl, verl.trainer.ppo.core_algos as c; print('spar' in c.ADV_ESTIMATOR_REGISTRY)"`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def register_advantage_estimators() -> None:
    """algorithm.adv_estimator=spar (and the spar_global ablation arm) -> m3.rl.spar."""
    from m3.rl import spar

    spar.register()


def register_agent_loops() -> None:
    """agent_name "m3_consultation" / "m3_single_turn" -> m3.rl.agent_loop's two loops."""
    from m3.rl import agent_loop

    agent_loop.register()


REGISTRATIONS: tuple[Callable[[], None], ...] = (register_advantage_estimators, register_agent_loops)


def register_all(registrations: tuple[Callable[[], None], ...] = REGISTRATIONS) -> list[str]:
    """Run every registration step; return the names of those that failed (each logged at WARNING)."""
    failed = []
    for step in registrations:
        try:
            step()
        except Exception:  # one broken piece must not hide the others; verl would swallow it at DEBUG
            logger.warning(
                "m3 verl plugin: %s failed; its names are not registered", step.__name__, exc_info=True
            )
            failed.append(step.__name__)
    return failed


register_all()
