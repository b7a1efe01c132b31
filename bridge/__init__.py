"""fleet-bridge: VisionMax fleet safety events pushed to webhooks, Slack and MQTT."""

__version__ = "0.1.0"
