"""`fleet-bridge check` for templates: render each template target against an example
of every notification type its filter lets through (SPEC §6.1).

The examples are the real ones of docs/notifications.md (bridge/examples.py), redacted
as the target's `redact` says, so a template that reads a redacted path fails here
rather than on the first real delivery.
"""

from __future__ import annotations

from bridge.examples import build_examples
from bridge.formats import RenderError
from bridge.formats.template import TemplateFormat, template_field
from bridge.notifications import Notification
from bridge.routing import redact
from bridge.settings import Settings, TargetFilter, WebhookTarget
from bridge.storm import GROUP_TYPE


def could_pass(flt: TargetFilter, example: Notification) -> bool:
    """True when the filter lets *some* notification of the example's type through.

    An example's own device or event code says nothing about what a target will get,
    so value criteria only ask that the type carries the key they look at (clip
    notifications have no severity, so `min_severity` keeps them out).
    """
    keys = example.keys
    if flt.types and example.type not in flt.types:
        return False
    wanted = [
        (bool(flt.event_types), keys.event_code),
        (bool(flt.categories), keys.category),
        (flt.min_severity is not None, keys.severity),
        (bool(flt.device_cids), keys.device_cid),
    ]
    return all(value is not None for is_set, value in wanted if is_set)


def template_problems(settings: Settings) -> list[str]:
    """One line per failing (template target, type): `targets[i].preset: <type>: <error>`."""
    examples = build_examples()
    problems = []
    for i, target in enumerate(settings.targets):
        if not isinstance(target, WebhookTarget) or target.format != "template":
            continue
        fmt = TemplateFormat.from_target(target)
        where = f"targets[{i}].{template_field(target)}"
        # An event.group is built for one target, only by its own storm control.
        groups = target.group is not None or bool(target.mute)
        for example in examples:
            if example.type == GROUP_TYPE:
                if not groups:
                    continue
            elif example.type != "bridge.test" and not could_pass(target.filter, example):
                continue
            try:
                fmt.render(redact(example.envelope(), target.redact))
            except RenderError as err:
                problems.append(f"{where}: {example.type}: {err}")
    return problems
