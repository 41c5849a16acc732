"""The `stylelora` command: one module per command group; it parses flags into configs and turns errors into exit codes."""
