"""One settings object for a run, built the same way by every front end.

:class:`RunOptions` holds what the endpoint is scored with (a :class:`ScoreConfig`) and who
scores it (:class:`Credentials`). The Python API (``engine.score``/``ascore``), Spark and,
through them, the CLI and Airflow build it with :meth:`RunOptions.build`, which takes the
library's keyword arguments: ``**options`` override ``config``'s fields, and a pair that would
otherwise leave one side silently ignored (``config`` with a different ``endpoint``,
``credentials`` with ``host``/``client_id``/``client_secret``/``profile``/``auth``) is a
:class:`~engine.errors.UsageError` naming the parameters in backticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from engine.config import Credentials, ScoreConfig
from engine.errors import UsageError

__all__ = ["RunOptions", "resolve_credentials", "score_config"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The settings of one run.

    Attributes:
        config: the endpoint and how to score it.
        credentials: the workspace and the identity that scores it.
    """

    config: ScoreConfig
    credentials: Credentials

    @classmethod
    def build(
        cls,
        *,
        config: ScoreConfig | None = None,
        endpoint: str | None = None,
        options: Mapping[str, Any] | None = None,
        credentials: Credentials | None = None,
        **identity: str | None,
    ) -> RunOptions:
        """The run's settings from the library's keyword arguments.

        Args:
            config, endpoint, options: as :func:`score_config`.
            credentials, identity: as :func:`resolve_credentials` (``host``, ``client_id``,
                ``client_secret``, ``profile``, ``auth``).

        Raises:
            UsageError: a conflicting pair (see the module docstring), or an unknown option.
        """
        return cls(
            score_config(config, endpoint, options or {}),
            resolve_credentials(credentials, **identity),
        )


def score_config(
    config: ScoreConfig | None, endpoint: str | None, options: Mapping[str, Any]
) -> ScoreConfig:
    """``config`` with ``options`` applied, or a new :class:`ScoreConfig` of them.

    Raises:
        UsageError: ``endpoint`` names another endpoint than ``config.endpoint``.
    """
    if config is None:
        return ScoreConfig(endpoint=endpoint or "", **options)
    if endpoint is not None and endpoint != config.endpoint:
        raise UsageError(
            f"`endpoint` ({endpoint!r}) and `config` (endpoint {config.endpoint!r}) disagree: "
            "pass the endpoint once, in one of them"
        )
    return replace(config, **options) if options else config


def resolve_credentials(
    credentials: Credentials | None,
    *,
    host: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
) -> Credentials:
    """``credentials`` if given, else :meth:`Credentials.from_env` of the other arguments.

    Raises:
        UsageError: ``credentials`` is given together with any of the other arguments.
    """
    if credentials is None:
        return Credentials.from_env(
            host=host, client_id=client_id, client_secret=client_secret, profile=profile, auth=auth
        )
    given = {"host": host, "client_id": client_id, "client_secret": client_secret}
    given |= {"profile": profile, "auth": auth}
    extra = [f"`{name}`" for name, value in given.items() if value is not None]
    if extra:
        raise UsageError(
            f"`credentials` and {', '.join(extra)} both say who scores: pass `credentials` "
            "alone, or the separate values without it"
        )
    return credentials
