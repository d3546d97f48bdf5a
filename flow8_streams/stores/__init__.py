"""Storage ports (``ports``) and their adapters: ``sqlite`` (embedded) and ``mongo``."""
