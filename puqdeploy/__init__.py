"""puqdeploy: durable, cron-driven provisioning of HestiaCP hosting services.

Kept import-free on purpose: `puqdeploy create` and `status --json` must start fast, so
nothing heavy (paramiko, rich, dnspython) may be imported at package level.
"""

__version__ = "0.1.0"
