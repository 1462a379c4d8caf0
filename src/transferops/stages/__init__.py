"""Pipeline stages: one ``run(cfg, tracker) -> StageResult`` per file."""
