"""Methods and downstream tasks from outside the package: entry points and imported modules.

Three places hold methods (``clap_bench.methods``'s registry) and tasks (``clap_bench.downstream``'s):

* the package itself (``methods/zoo.py``, ``downstream/tasks.py``): ``built-in``;
* installed distributions declaring entry points in the groups ``clap_bench.methods`` /
  ``clap_bench.tasks`` (``[project.entry-points."clap_bench.methods"] my-method = "my_pkg.my_method"``):
  loaded on the first look-up of the registry. An entry point names a module (whose
  ``@register_method`` / ``@register_task`` decorators register) or a ``MethodConfig`` subclass
  (registered under the entry point's name unless it registered itself);
* modules named by a profile's ``imports: [my_pkg.my_method]`` or by ``--import my_pkg.my_method``
  on the command line: imported by ``import_modules`` before the run is planned (and again in
  every process that runs a stage, from the profile it carries).

A module that fails to import, an entry point that names something that is not a method, and
two registrations of one name are errors naming the plug-in; nothing is skipped silently.

``plugin_identity`` is what the run store hashes for a plug-in method or task: its distribution
and version when it comes from an installed distribution, else the SHA-256 of its module's
source file, so a changed plug-in invalidates its stages (built-ins: ``None``, the package's
own stages are keyed by their config alone).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from clap_bench.config import ConfigError
from clap_bench.registry import registering_from

METHOD_GROUP = "clap_bench.methods"
TASK_GROUP = "clap_bench.tasks"


# Module name -> the distribution whose entry point loaded it (its version identifies the code).
_ENTRY_POINT_DISTS: Dict[str, metadata.Distribution] = {}


class PluginImportError(ConfigError):
    """A plug-in module or entry point could not be loaded."""


def _entry_points(group: str) -> List[metadata.EntryPoint]:
    eps = metadata.entry_points()
    selected = eps.select(group=group) if hasattr(eps, "select") else eps.get(group, [])
    return sorted(selected, key=lambda ep: (ep.name, ep.value))


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an installed distribution"


def load_entry_points(group: str) -> None:
    """Load every entry point of ``group`` (``clap_bench.methods`` or ``clap_bench.tasks``)."""
    for ep in _entry_points(group):
        origin = f"entry point {ep.name} = {ep.value} ({_dist_label(ep)})"
        with registering_from(origin):
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginImportError(f"{origin}: failed to load: {type(e).__name__}: {e}") from e
            module_name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
            if module_name and getattr(ep, "dist", None) is not None:
                _ENTRY_POINT_DISTS[module_name] = ep.dist
            if inspect.ismodule(obj):
                continue
            if group == METHOD_GROUP:
                _register_method_object(ep.name, obj, origin)
            elif not _is_registered_task(obj):
                raise PluginImportError(
                    f"{origin}: names {obj!r}, which is neither a module nor a function decorated with "
                    "@register_task (clap_bench.downstream.base)"
                )


def _register_method_object(name: str, obj: Any, origin: str) -> None:
    from clap_bench.methods.base import METHODS, MethodConfig, register_method

    if not (isinstance(obj, type) and issubclass(obj, MethodConfig)):
        raise PluginImportError(
            f"{origin}: {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!r} is not a method: "
            "expected a module or a subclass of clap_bench.methods.MethodConfig"
        )
    if obj.name and obj.name in METHODS._entries and METHODS._entries[obj.name] is obj:
        return  # it registered itself with @register_method
    register_method(name)(obj)


def _is_registered_task(obj: Any) -> bool:
    from clap_bench.downstream.base import TASKS

    return any(getattr(factory, "__wrapped_task__", None) is obj for factory in TASKS._entries.values())


def import_modules(modules: Iterable[str], where: str = "--import") -> None:
    """Import each plug-in module (dotted name); its decorators register its methods and tasks."""
    for module in modules:
        if not isinstance(module, str) or not module.strip():
            raise PluginImportError(f"{where}: expected a dotted module name, got {module!r}")
        module = module.strip()
        if module in sys.modules:
            continue
        with registering_from(f"module {module} ({where})"):
            try:
                importlib.import_module(module)
            except Exception as e:
                sys.modules.pop(module, None)
                raise PluginImportError(
                    f"plug-in module {module!r} ({where}) failed to import: {type(e).__name__}: {e}"
                ) from e


def load_profile_imports(profile) -> None:
    """The modules of the profile's ``imports`` (``--import`` adds to them): called by every entry
    point that plans or runs stages, so a worker process registers the same plug-ins."""
    imports = list(getattr(profile, "imports", None) or [])
    if imports:
        import_modules(imports, where=f"profile {profile.name!r}: imports")


def with_imports(profile, modules: Optional[Iterable[str]]):
    """``profile`` with ``modules`` appended to its ``imports`` (each once), and all of them imported."""
    import dataclasses

    extra = [m for m in (modules or []) if m not in profile.imports]
    if extra:
        import_modules(extra, where="--import")
        profile = dataclasses.replace(profile, imports=list(profile.imports) + extra)
    load_profile_imports(profile)
    return profile


# --------------------------------------------------------------------------- versions
def _distribution_of(module_name: str) -> Optional[metadata.Distribution]:
    if module_name in _ENTRY_POINT_DISTS:
        return _ENTRY_POINT_DISTS[module_name]
    top = module_name.split(".")[0]
    try:
        names = metadata.packages_distributions().get(top) or []
    except Exception:  # pragma: no cover (very old importlib.metadata)
        names = []
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _editable_or_source(module_name: str) -> Dict[str, Any]:
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    path = getattr(module, "__file__", None)
    if not path or not Path(path).is_file():
        return {"module": module_name, "source_sha256": None}
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"module": module_name, "source_sha256": digest}


def plugin_identity(obj: Any) -> Optional[Dict[str, Any]]:
    """What identifies the code of a plug-in method class or task function (``None`` for built-ins).

    From an installed (non-editable) distribution: its name and version. Otherwise (a module on
    ``PYTHONPATH``, or an editable install whose version rarely moves with its code): the
    SHA-256 of the module's source file, and the distribution version when there is one.
    """
    module_name = getattr(obj, "__module__", None) or ""
    if module_name == "clap_bench" or module_name.startswith("clap_bench."):
        return None
    identity: Dict[str, Any] = {}
    dist = _distribution_of(module_name)
    if dist is not None:
        identity["distribution"] = dist.metadata["Name"]
        identity["version"] = dist.version
    if dist is None or _is_editable(dist):
        identity.update(_editable_or_source(module_name))
    return identity


def _is_editable(dist: metadata.Distribution) -> bool:
    """PEP 610's ``direct_url.json``: ``{"dir_info": {"editable": true}}``, however an installer spaces it."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(direct, dict) and bool((direct.get("dir_info") or {}).get("editable"))


def method_identity(name: str, overrides: Optional[dict] = None) -> Optional[Dict[str, Any]]:
    """A plug-in method's code identity and its full resolved config (``None`` for a built-in)."""
    from clap_bench.methods import METHODS, method_from_profile

    cls = METHODS.get(name)
    code = plugin_identity(cls)
    if code is None:
        return None
    return {"code": code, "config": method_from_profile(name, {name: overrides}).to_dict()}
