"""Prefect's server-side rendering of a deployment trigger's parameters, callable in a test."""

from __future__ import annotations

import copy
import uuid

from prefect.server.events.actions import RunDeployment
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate


def render(parameters: dict, event: ReceivedEvent) -> dict:
    """What the Prefect server's RunDeployment action does with a trigger's parameters (actions.py)."""
    RunDeployment(source="selected", deployment_id=uuid.uuid4(), parameters=parameters)  # the server's checks
    upgraded = copy.deepcopy(parameters)
    RunDeployment._upgrade_v1_templates(upgraded)
    context = HydrationContext(render_jinja=True, jinja_context={"event": event}, raise_on_error=True)
    return hydrate(upgraded, context)
