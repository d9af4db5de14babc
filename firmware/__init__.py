"""The charge controller: one asyncio process per charge point (`voltpilot run`)."""
