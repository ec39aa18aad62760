"""The command-line edge: one module per `config.mode`, each with `validate(config)` and `run(config, workdir)`."""
