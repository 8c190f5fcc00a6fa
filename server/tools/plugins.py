"""Plugins as a tool source: find plugin modules, validate their settings, run their tools.

A plugin is a `.py` file (or a package directory) in plugins/ or an extra directory. Only the
modules enabled in config are imported, once per process; their `@tool` functions become
`ToolSpec`s built from this instance's settings (no global descriptor that one config could
overwrite for everyone). Settings problems are found at startup, with the config path in the
message; problems during a call become error results for the model, never exceptions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from server.config.errors import one_line
from server.tools.base import ToolContext, ToolResult, ToolSpec
from server.tools.decorator import Tool

log = logging.getLogger("server.plugins")

DEFAULT_PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins"
# Loaded plugin modules live under this prefix in sys.modules, apart from importable packages,
# so a user's `plugins/json.py` can never shadow the standard library.
MODULE_PREFIX = "xiaozhi_plugins"


class PluginConfigError(ValueError):
    """A plugin configuration problem, as one line naming the config key."""


@dataclass(slots=True)
class PluginModule:
    name: str
    path: Path
    module: ModuleType
    tools: list[Tool]
    settings_model: type[BaseModel] | None


def available_plugins(dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Plugin name -> file, without importing anything. A later directory wins over an earlier
    one, so a user's directory can replace a built-in plugin of the same name."""
    found: dict[str, Path] = {}
    for d in dirs:
        directory = Path(d)
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            if entry.is_file() and entry.suffix == ".py":
                path = entry
            elif entry.is_dir() and (entry / "__init__.py").is_file():
                path = entry / "__init__.py"
            else:
                continue
            if entry.stem in found and found[entry.stem] != path:
                log.info("plugin %s: %s replaces %s", entry.stem, path, found[entry.stem])
            found[entry.stem] = path
    return found


_loaded: dict[Path, PluginModule] = {}


def load_plugin(name: str, path: Path) -> PluginModule:
    """Import one plugin module (cached per file) and collect its tools and Settings model."""
    path = path.resolve()
    if path in _loaded:
        return _loaded[path]
    mod_name = f"{MODULE_PREFIX}.{name}"
    if mod_name in sys.modules and getattr(sys.modules[mod_name], "__file__", None) != str(path):
        # Same name from another directory (tests, user dirs): keep both importable.
        mod_name = f"{MODULE_PREFIX}.{name}_{abs(hash(str(path))) & 0xFFFFFF:06x}"
    is_package = path.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        mod_name, path, submodule_search_locations=[str(path.parent)] if is_package else None)
    if spec is None or spec.loader is None:
        raise PluginConfigError(f"plugins.{name}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: pydantic and dataclasses look their module up by name.
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise PluginConfigError(f"plugins.{name}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    tools = [v for v in vars(module).values() if isinstance(v, Tool) and v.module == mod_name]
    settings_model = getattr(module, "Settings", None)
    if settings_model is not None and not (isinstance(settings_model, type) and issubclass(settings_model, BaseModel)):
        raise PluginConfigError(f"plugins.{name}: `Settings` in {path} must be a pydantic BaseModel subclass")
    loaded = PluginModule(name, path, module, tools, settings_model)
    _loaded[path] = loaded
    return loaded


def validate_settings(plugin: PluginModule, raw: Mapping[str, Any] | None) -> BaseModel | None:
    """The plugin's validated Settings model (defaults filled in, types converted); None for a
    plugin without one."""
    raw = {k: v for k, v in (raw or {}).items() if k != "enabled"}
    model = plugin.settings_model
    if model is None:
        if raw:
            raise PluginConfigError(f"plugins.{plugin.name}.{sorted(raw)[0]}: this plugin takes no settings")
        return None
    if model.model_config.get("extra") != "allow":
        # A misspelt key would otherwise be ignored silently and the default used instead.
        known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PluginConfigError(f"plugins.{plugin.name}.{unknown[0]}: unknown setting; known: "
                                    f"{', '.join(sorted(model.model_fields)) or 'none'}")
    try:
        validated = model.model_validate(raw)
    except ValidationError as exc:
        raise PluginConfigError(one_line(exc, f"plugins.{plugin.name}")) from None
    return validated


@dataclass(slots=True)
class _Entry:
    plugin: str
    tool: Tool
    settings: BaseModel | None
    spec: ToolSpec


class PluginTools:
    """The enabled plugins' tools, as one ToolSource shared by all sessions.

    `enabled` maps a plugin (module) name to its settings; an `enabled` key inside is ignored
    (use `from_config` for a whole `plugins:` section with `enabled: false` entries)."""

    name = "plugins"

    def __init__(self, enabled: Mapping[str, Mapping[str, Any] | None],
                 dirs: Sequence[str | Path] | None = None, extra_dirs: Sequence[str | Path] = ()) -> None:
        self.dirs = [Path(d) for d in (dirs if dirs is not None else [DEFAULT_PLUGIN_DIR])]
        self.dirs += [Path(d) for d in extra_dirs]
        available = available_plugins(self.dirs)
        unknown = sorted(set(enabled) - set(available))
        if unknown:
            raise PluginConfigError(f"plugins.{unknown[0]}: no such plugin in {', '.join(map(str, self.dirs))}; "
                                    f"available: {', '.join(sorted(available)) or 'none'}")
        self.plugins: dict[str, PluginModule] = {}
        self._entries: dict[str, _Entry] = {}
        for plugin_name in enabled:
            plugin = load_plugin(plugin_name, available[plugin_name])
            settings = validate_settings(plugin, enabled[plugin_name])
            if not plugin.tools:
                log.warning("plugin %s (%s) defines no @tool functions", plugin_name, plugin.path)
            for t in plugin.tools:
                if t.name in self._entries:
                    raise PluginConfigError(f"plugins.{plugin_name}: tool name {t.name!r} is already provided "
                                            f"by plugin {self._entries[t.name].plugin}")
                try:
                    spec = t.spec(settings)
                except Exception as exc:  # a description built from settings
                    raise PluginConfigError(f"plugins.{plugin_name}: describing tool {t.name} failed: "
                                            f"{type(exc).__name__}: {exc}") from exc
                self._entries[t.name] = _Entry(plugin_name, t, settings, spec)
            self.plugins[plugin_name] = plugin
        log.info("plugins: %s", ", ".join(f"{n} ({', '.join(t.name for t in p.tools)})"
                                         for n, p in self.plugins.items()) or "none")

    @classmethod
    def from_config(cls, section: Mapping[str, Mapping[str, Any] | None],
                    dirs: Sequence[str | Path] | None = None, extra_dirs: Sequence[str | Path] = ()) -> PluginTools:
        """From config.yaml's `plugins:` mapping: a plugin is on when its section exists, unless
        it says `enabled: false`."""
        enabled: dict[str, Mapping[str, Any] | None] = {}
        for name, settings in section.items():
            if settings is not None and not isinstance(settings, Mapping):
                raise PluginConfigError(f"plugins.{name}: expected a mapping of settings")
            flag = (settings or {}).get("enabled", True)
            if not isinstance(flag, bool):
                raise PluginConfigError(f"plugins.{name}.enabled: expected true or false (got {flag!r})")
            if flag:
                enabled[name] = settings
        return cls(enabled, dirs=dirs, extra_dirs=extra_dirs)

    def specs(self) -> list[ToolSpec]:
        return [e.spec for e in self._entries.values()]

    def plugin_of(self, tool_name: str) -> str | None:
        entry = self._entries.get(tool_name)
        return entry.plugin if entry else None

    async def call(self, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> ToolResult:
        entry = self._entries.get(name)
        if entry is None:
            return ToolResult.error(f"unknown plugin tool {name!r}; available: {', '.join(sorted(self._entries))}")
        # A copy per call: the session's context is not ours to change, and a tool that edits
        # its settings must not affect the next call.
        settings = entry.settings.model_copy(deep=True) if entry.settings is not None else None
        call_ctx = dataclasses.replace(ctx, settings=settings)
        try:
            return await entry.tool.invoke(call_ctx, arguments or {})
        except Exception as exc:  # noqa: BLE001 - the model gets an error result, the log the trace
            log.exception("plugin %s: tool %s raised", entry.plugin, name)
            return ToolResult.error(f"{name} failed: {type(exc).__name__}: {exc}")
