"""``python -m invar_rag_integrations.cli``."""

from . import main

main()
