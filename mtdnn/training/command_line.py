"""The training command line, checked before Hydra sees it: a bad override, or a bad value anywhere in a
sweep, is one clear line naming the override instead of Hydra's multi-line report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtdnn.core.commands import cli_errors
from mtdnn.core.errors import MtdnnError, config_error_line
from mtdnn.core.paths import conf_dir
from mtdnn.core.typed import suggest
from mtdnn.runs.checkpoints import CHECKPOINTS
from mtdnn.runs.folder import override_key, saved_overrides
from mtdnn.training.sweeps import covering_jobs, expand


@cli_errors
def check_overrides(overrides: list[str]) -> None:
    """Compose once before Hydra does, so a bad override is one clear line instead of Hydra's report."""
    raise_naming_culprit(overrides, compose_problem)


def compose_problem(given: list[str]) -> str | None:
    try:
        composed(given)
    except Exception as err:  # Hydra and OmegaConf raise many types; all mean "this override is wrong"
        return one_line(err)
    return None


def composed(given: list[str]):
    """The run's configuration with Hydra's own, as Hydra will compose it from these overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mtdnn.core import config  # noqa: F401  (registers the typed schemas the YAML defaults name)

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("train", overrides=given, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@cli_errors
def check_sweep(command_line: list[str]) -> None:
    """A sweep's jobs are checked as a single run's overrides are (a few jobs that hold every value between
    them), so a bad value is one line before any job runs."""

    def grammar_problem(given: list[str]) -> str | None:
        try:
            expand(given)
        except Exception as err:  # noqa: BLE001  (Hydra's override grammar: a malformed sweep)
            return one_line(err)
        return None

    raise_naming_culprit(command_line, grammar_problem)
    for job in covering_jobs(expand(command_line)):
        check_overrides(job)


@cli_errors
def check_search(command_line: list[str]) -> None:
    """An Optuna search (hydra/sweeper=search): its fixed settings are checked as a single run's, and every
    searched range (the command line's and the sweeper config's) is built as the sweeper builds it and tried
    as a setting, so a range Optuna rejects (a log range from 0, low above high) or a setting this run lacks
    is one line naming it before any trial."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    parser = OverridesParser.create()
    raise_naming_culprit(command_line, lambda given: _grammar_problem(parser, given))
    parsed = parser.parse_overrides(command_line)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    check_overrides(fixed)
    searched = {o.get_key_element(): o.input_line for o in parsed if o.is_sweep_override()}
    for key, value in _sweeper_params(fixed).items():
        searched.setdefault(key, f"{key}={value}")
    for key, line in searched.items():
        try:
            space = create_optuna_distribution_from_override(parser.parse_override(line))
        except Exception as err:  # noqa: BLE001  (Optuna's ValueError, the plugin's assertions)
            raise MtdnnError(
                f"{key}: Optuna cannot search {line.split('=', 1)[1]}: {one_line(err)}"
            ) from None
        # a trial sets the key to a value from the range: it must be a setting of this run
        setting = key.removeprefix("hydra.sweeper.params.")
        problem = compose_problem([*fixed, f"{setting}={_one_value(space)}"])
        if problem:
            raise MtdnnError(f"{key}: searched, but a trial cannot set it: {problem}")


def _one_value(space) -> object:
    choices = getattr(space, "choices", None)
    return choices[0] if choices else space.low


def _grammar_problem(parser, given: list[str]) -> str | None:
    try:
        parser.parse_overrides(given)
    except Exception as err:  # noqa: BLE001  (Hydra's override grammar)
        return one_line(err)
    return None


def _sweeper_params(fixed: list[str]) -> dict[str, str]:
    """The search space the sweeper config holds (hydra.sweeper.params), after the fixed overrides."""
    from omegaconf import OmegaConf

    params = OmegaConf.select(composed(fixed), "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


@cli_errors
def with_the_run_s_own_command(overrides: list[str]) -> list[str]:
    """A resume names the run (`resume=auto output_dir=RUN`, or `resume=RUN`): the overrides that made it come
    first, so it continues as it was configured; the command line's own win, and are checked as changes."""
    given = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    resume = given.get("resume")
    if resume in (None, "null"):
        return overrides
    folder = given.get("output_dir") if resume == "auto" else resume
    if not folder:
        return overrides
    run_dir = Path(folder).expanduser()
    if run_dir.parent.name == CHECKPOINTS:  # resume=RUN/checkpoints/step_N
        run_dir = run_dir.parent.parent
    saved = [o for o in saved_overrides(run_dir) if override_key(o) not in given]
    return [*saved, *overrides]


def raise_naming_culprit(overrides: list[str], problem: Callable[[list[str]], str | None]) -> None:
    """Raise `problem(overrides)` if there is one, naming the override at fault: Hydra's messages do not
    always name it ("must be a string or a list", "mismatched input"), so each override is tried alone."""
    message = problem(overrides)
    if message is None:
        return
    culprit = next((o for o in overrides if problem([o]) is not None), None)
    name = culprit.split("=", 1)[0].lstrip("+~") if culprit else None
    raise MtdnnError(message if name is None or name in message else f"{culprit}: {message}")


def one_line(err: Exception) -> str:
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options if not o.endswith("_schema")]
        return f"{group}={name}: no such option{suggest(name, options)}; available: {', '.join(options)}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return config_error_line(cause)
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
