"""Method registry: which config section turns on which training method.

Every method is a :class:`~spikegrad.component.Component` class with a keyword-only
``from_config(section, *, ...)``. An entry names the config section it reads, when that
section asks for the method, and which of the builder's resources ``from_config`` needs
besides the section (``seed``: ``train.seed``; ``teacher``: the resolved ANN teacher).
Entries are kept in the order the methods are built and their hooks run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from spikegrad.component import Component
from spikegrad.config import Config, from_dict
from spikegrad.diagnostics import GradientDiagnostics
from spikegrad.errors import UserError, changed_fields, unknown_name_error
from spikegrad.methods.dspike import AdaptiveTemperature
from spikegrad.methods.ltl import LocalTandemLearning
from spikegrad.methods.shortcut import ShortcutBackprop

__all__ = ["RESOURCES", "Method", "check_given_settings", "components_from_config", "components_note",
           "enabled_methods", "method", "method_label", "methods", "register_method", "run_name",
           "unused_note", "unused_settings"]

#: what a builder can pass to ``from_config`` besides the section
RESOURCES = ("seed", "teacher")


@dataclass(frozen=True)
class Method:
    """A registered method: ``component.from_config(config.<section>, **needs)``."""

    section: str
    component: type[Component]
    #: ``enabled(config, model)``: does this config ask for the method on this model?
    enabled: Callable[[Config, nn.Module | None], bool]
    needs: tuple[str, ...] = ()
    description: str = ""
    #: ``(key, value)``: the section's key and the value of it that switches the method off
    switch: tuple[str, Any] | None = None

    def unused_when_off(self, config: Config) -> list[str]:
        """``key=value`` of every other key of the section that differs from its default while
        the section's ``switch`` turns the method off: kept (a recipe stays its own baseline
        with the method switched off, and stored runs rebuild), but read by nothing."""
        if self.switch is None:
            return []
        key, off = self.switch
        section = getattr(config, self.section)
        if getattr(section, key) != off:
            return []
        return [f"{self.section}.{name}={getattr(section, name)!r}"
                for name in changed_fields(section) if name != key]

    def missing(self, resources: dict[str, Any]) -> list[str]:
        """The resources ``from_config`` needs that ``resources`` leaves ``None``."""
        return [n for n in self.needs if resources[n] is None]

    def build(self, config: Config, resources: dict[str, Any]) -> Component:
        """``component.from_config(config.<section>, ...)`` given the resources it needs."""
        return self.component.from_config(getattr(config, self.section),
                                          **{n: resources[n] for n in self.needs})

    def switched_on_but_not_applied(self, config: Config) -> bool:
        """Whether the section's ``switch`` turns the method on while ``enabled`` still leaves it
        out for the config's model (Dspike's search on an ANN twin, which has no surrogate)."""
        if self.switch is None:
            return False
        key, off = self.switch
        return getattr(getattr(config, self.section), key) != off and not self.enabled(config, None)


_METHODS: dict[str, Method] = {}


def register_method(section: str, component: type[Component],
                    enabled: Callable[[Config, nn.Module | None], bool], *,
                    needs: tuple[str, ...] = (), description: str = "",
                    switch: tuple[str, Any] | None = None) -> Method:
    """Register the method that ``config.<section>`` configures (built after those before it).

    ``switch``: ``(key, value)`` when ``<section>.<key> = value`` switches the method off; the
    section's other keys are then unused (:func:`unused_settings` names them).
    """
    if section in _METHODS:
        raise RuntimeError(f"method section {section!r} is registered twice")
    if section not in Config.__dataclass_fields__:
        raise RuntimeError(f"{section!r} is not a config section")
    unknown = [n for n in needs if n not in RESOURCES]
    if unknown or not callable(getattr(component, "from_config", None)):
        raise RuntimeError(f"{component.__name__} needs from_config(section, *, ...) taking only "
                           f"{RESOURCES}, not {unknown}")
    if switch is not None and switch[0] not in {f.name for f in fields(getattr(Config(), section))}:
        raise RuntimeError(f"{switch[0]!r} is not a key of the {section!r} section")
    _METHODS[section] = entry = Method(section, component, enabled, needs, description, switch)
    return entry


def methods() -> list[Method]:
    """Every registered method, in build order."""
    return list(_METHODS.values())


def method(section: str) -> Method:
    """The method configured by ``config.<section>``; an unknown section lists the valid ones."""
    if section not in _METHODS:
        raise unknown_name_error("method section", section, _METHODS)
    return _METHODS[section]


def enabled_methods(config: Config, model: nn.Module | None = None) -> list[Method]:
    """The methods ``config`` turns on for ``model``, in build order."""
    return [m for m in _METHODS.values() if m.enabled(config, model)]


def components_from_config(config: Config, model: nn.Module | None = None, *,
                           teacher: nn.Module | None = None) -> list[Component]:
    """One component per method ``config`` turns on, each from its section's ``from_config``
    (after its :meth:`~spikegrad.component.Component.check_config`).

    ``teacher`` is the resolved ANN teacher (local tandem learning); resolving it from
    ``ltl.teacher_checkpoint`` or ``ltl.teacher_recipe`` is the caller's business
    (:func:`spikegrad.build.build_components`).
    """
    resources: dict[str, Any] = {"seed": config.train.seed, "teacher": teacher}
    components = []
    for entry in enabled_methods(config, model):
        missing = entry.missing(resources)
        if missing:
            raise UserError(f"the {entry.section} section needs the {' and '.join(missing)} "
                            "resolved first (spikegrad.build.build_components does it)")
        entry.component.check_config(config)
        components.append(entry.build(config, resources))
    return components


def unused_settings(config: Config) -> list[str]:
    """The settings of every method ``config`` switches off by its section's switch that differ
    from their defaults (``shortcut.lambda0=1.0`` with ``shortcut.enabled: false``): nothing
    reads them; the trainer says so before training."""
    return [setting for entry in _METHODS.values() for setting in entry.unused_when_off(config)]


def unused_note(config: Config) -> str:
    """The lines a trainer prints before training when :func:`unused_settings` names any, or
    when a method's switch is on but its model cannot take it (Dspike's search on an ANN twin,
    the teacher of an LTL recipe that searches), else ""."""
    lines = []
    unused = unused_settings(config)
    if unused:
        lines.append(f"note: not used, their methods being switched off: {', '.join(unused)}")
    for entry in _METHODS.values():
        if entry.switched_on_but_not_applied(config):
            key = entry.switch[0]
            lines.append(f"note: {entry.section}.{key}={getattr(getattr(config, entry.section), key)!r} "
                         f"does not apply to this model (model.kind {config.model.kind}): it trains "
                         f"without the {entry.description}")
    return "\n".join(lines)


def check_given_settings(config: Config, components: Sequence[Component]) -> None:
    """Refuse a method's component given to a trainer by hand with settings its config section
    could not hold (a ``DspikeConfig(every=0)`` built in Python, a ``ShortcutBackprop`` with a
    negative ``lambda0``): the checks of loading a recipe, the key named as in a recipe."""
    registered = {m.component: m for m in _METHODS.values()}
    for component in components:
        entry = registered.get(type(component))
        if entry is not None:
            section = getattr(config, entry.section)
            from_dict(type(section), component.section_settings(), prefix=f"{entry.section}.")


def components_note(config: Config, model: nn.Module | None, components: Sequence[Component]) -> str:
    """A line for components given to a trainer by hand that differ from the methods ``config``
    turns on (a method the config switches off, or one it turns on left out) or from the
    settings of its section (a ``ShortcutBackprop(lambda0=1.0)`` beside ``shortcut.lambda0:
    0.5``): the run folder's config.yaml then does not describe the run, and a resume from it
    rebuilds other methods. "" when they agree; components of no registered method (your own)
    do not count."""
    registered = {m.component: m for m in _METHODS.values()}
    given = [c for c in components if type(c) in registered]
    wanted = {m.component for m in enabled_methods(config, model)}
    extra = sorted({registered[type(c)].section for c in given if type(c) not in wanted})
    missing = sorted(registered[c].section for c in wanted - {type(c) for c in given})
    parts = ([f"{', '.join(extra)} given, switched off in the config"] if extra else []) + \
        ([f"{', '.join(missing)} on in the config, not given"] if missing else [])
    parts += [difference for c in given if type(c) in wanted
              for difference in _setting_differences(config, registered[type(c)], c)]
    if not parts:
        return ""
    return ("note: the components given differ from the config's methods (" + "; ".join(parts) +
            "): the run folder's config.yaml will not describe this run, and resuming from it "
            "builds the config's methods; set the config's method sections to match, or pass "
            "components=None to build them from the config")


def _setting_differences(config: Config, entry: Method, component: Component) -> list[str]:
    """``section.key: <given> given, <config's> in the config`` for each setting in which
    ``component`` differs from the component built from ``config``'s section (with the given
    component's own teacher, which is not a setting, and ``train.seed``); a section that does
    not build says so."""
    resources = {"seed": config.train.seed, "teacher": getattr(component, "teacher", None)}
    if entry.missing(resources):
        return []
    try:
        built = entry.build(config, resources)
    except UserError as error:
        return [f"{entry.section} given, its config section does not build: {error}"]
    mine, theirs = component.section_settings(), built.section_settings()
    return [f"{entry.section}.{key}: {mine[key]!r} given, {theirs.get(key)!r} in the config"
            for key in mine if _comparable(mine[key]) != _comparable(theirs.get(key))]


def _comparable(value: Any) -> Any:
    """Tuples and lists compare as lists (a config holds lists, a caller may pass tuples)."""
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def method_label(config: Config) -> str:
    """The method name a run of ``config`` reports (``summary.json``'s ``method``), from the
    config alone: ``ann`` or the surrogate's name, refined by each method the config turns on
    (``dspike-adaptive``, ``dspike+evolutionary``, ``ltl-online``)."""
    surrogate = config.model.surrogate
    name = "ann" if config.model.kind == "ann" else str(
        surrogate.get("name", "snn") if isinstance(surrogate, dict) else surrogate).lower()
    for entry in enabled_methods(config):
        name = entry.component.section_method_name(getattr(config, entry.section), name)
    return name


def run_name(config: Config) -> str:
    """The run's name: ``config.name`` when set (a recipe's explicit name wins), else
    ``<data.name>-<method>`` (``digits-ann``, ``digits-dspike-adaptive-evolutionary``), the
    default run folder being ``runs/<name>``."""
    return config.name or f"{config.data.name}-{method_label(config).replace('+', '-')}"


def _model_kind(config: Config, model: nn.Module | None) -> str:
    """``snn`` or ``ann``: the model's own ``kind`` (registered networks), else ``model.kind``."""
    return getattr(model, "kind", None) or config.model.kind


register_method("ltl", LocalTandemLearning, lambda config, model: config.ltl.mode != "none",
                needs=("teacher",), description="local tandem learning against an ANN teacher",
                switch=("mode", "none"))
# the ANN twin of an adaptive recipe (an LTL teacher, say) has no surrogate to search
register_method("dspike", AdaptiveTemperature,
                lambda config, model: config.dspike.adaptive and _model_kind(config, model) == "snn",
                needs=("seed",), description="adaptive Dspike temperature (Algorithm 1)",
                switch=("adaptive", False))
register_method("diagnostics", GradientDiagnostics,
                lambda config, model: config.diagnostics.gradient_interval > 0,
                description="gradient norms and the first layer's histogram",
                switch=("gradient_interval", 0))
register_method("shortcut", ShortcutBackprop, lambda config, model: config.shortcut.enabled,
                needs=("seed",), description="shortcut back-propagation branches",
                switch=("enabled", False))
