"""Training code for the Invar-RAG retriever and generator (DESIGN.md §2)."""
