"""The charge controller: one asyncio process per charge point (`voltpilot run`)."""

__version__ = "0.1.0"
