"""The jobs behind the ``metaopt`` subcommands, one module each (imported only when their subcommand runs)."""
