"""Load config.yaml, merge the user's override file on top, expand ${ENV}, validate.

Order: the shipped `config.yaml` (commented defaults) <- the override file (`--config FILE`,
else `data/.config.yaml` when present). Mappings merge key by key; lists and scalars replace.
`${NAME}` and `${NAME:-fallback}` expand inside string values, so secrets stay in the
environment. Any problem raises ConfigError whose message is one line naming the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from server.config.errors import ConfigError, one_line
from server.config.schema import PROVIDER_KINDS, AppConfig, ServerConfig
from server.providers.base import ProviderSettings
from server.providers.registry import UnknownProviderType, settings_model
from server.tools.remote_mcp.config import parse_mcp_servers

ROOT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT_DIR / "config.yaml"
DEFAULT_OVERRIDE = Path("data") / ".config.yaml"

CHAINABLE = ("asr", "llm", "tts")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A provider section whose `type` changes is a different provider: start from the
            # override alone, so keys of the old provider do not leak in and fail validation.
            if "type" in value and value.get("type") != out[key].get("type"):
                out[key] = value
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def expand_env(value: Any, path: str = "", env: dict[str, str] | None = None) -> Any:
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match[str]) -> str:
            name, fallback = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if fallback is not None:
                return fallback
            raise ConfigError(f"{path}: environment variable {name} is not set (write ${{{name}:-default}} "
                              "to give a fallback)")
        return _ENV_RE.sub(sub, value)
    return value


def validate_provider(kind: str, raw: Any, where: str | None = None) -> ProviderSettings:
    where = where or kind
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'type' key")
    type_name = raw.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"{where}.type: required (the provider to use)")
    try:
        model = settings_model(kind, type_name)
    except UnknownProviderType as exc:
        raise ConfigError(f"{where}.type: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, where)) from None


def validate_providers(raw: dict[str, Any]) -> dict[str, ProviderSettings | list[ProviderSettings]]:
    """Each provider section (`vad`, `asr`, `llm`, `tts`) validated against the chosen provider's
    own Settings model; a list is a fallback chain."""
    out: dict[str, ProviderSettings | list[ProviderSettings]] = {}
    for kind in PROVIDER_KINDS:
        value = raw.get(kind)
        if value is None:
            raise ConfigError(f"{kind}: required (a mapping with 'type')")
        if isinstance(value, list):
            if kind not in CHAINABLE:
                raise ConfigError(f"{kind}: a list (fallback chain) is only allowed for {', '.join(CHAINABLE)}")
            if not value:
                raise ConfigError(f"{kind}: the fallback list is empty")
            out[kind] = [validate_provider(kind, v, f"{kind}[{i}]") for i, v in enumerate(value)]
        else:
            out[kind] = validate_provider(kind, value)
    return out


def validate(raw: dict[str, Any]) -> AppConfig:
    """The whole config, validated once: the sections whose shape depends on a choice (the
    provider types, the MCP servers) are validated first and handed to AppConfig as models, so
    the result is complete when it is built and nothing is patched into it afterwards."""
    if not isinstance(raw.get("mcp_servers", {}), dict):
        raise ConfigError("mcp_servers: must be a mapping of server name -> settings")
    try:
        sections: dict[str, Any] = {**validate_providers(raw), "mcp_servers": parse_mcp_servers(raw.get("mcp_servers"))}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        config = AppConfig.model_validate({**raw, **sections})
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None
    validate_plugins(config)
    from server.state.config import fleet_problems

    problems = fleet_problems(config)
    if problems:
        more = len(problems) - 1
        raise ConfigError(problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))
    return config


def with_ports(config: AppConfig, ports: dict[str, int]) -> AppConfig:
    """A copy of `config` with `server.port` / `server.http_port` replaced (the command line's
    --port / --http-port), validated like the file's values; the original is not changed."""
    if not ports:
        return config
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **ports})
    except ValidationError as exc:
        raise ConfigError(one_line(exc, "server")) from None
    return config.model_copy(update={"server": server})


def validate_plugins(config: AppConfig) -> None:
    """Import the enabled plugins and check their settings, so `--check` catches plugin mistakes
    too (each plugin validates its own section with its Settings model)."""
    if not config.plugins:
        return
    from server.tools.plugins import PluginConfigError, PluginTools

    try:
        PluginTools.from_config(config.plugins)
    except PluginConfigError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    override: str | Path | None = None,
    base: str | Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> AppConfig:
    """Build the validated config. `override` None means `data/.config.yaml` if it exists."""
    base_path = Path(base) if base else DEFAULT_CONFIG
    raw = read_yaml(base_path)
    if override is not None:
        raw = deep_merge(raw, read_yaml(Path(override)))
    else:
        candidate = (cwd or ROOT_DIR) / DEFAULT_OVERRIDE
        if candidate.is_file():
            raw = deep_merge(raw, read_yaml(candidate))
    raw = expand_env(raw, env=env)
    return validate(raw)
