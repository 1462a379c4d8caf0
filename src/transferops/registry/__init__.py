"""Model registry workflow: the promotion gate, alias moves with history, rollback."""
