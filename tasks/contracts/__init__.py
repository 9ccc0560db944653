"""One owner per file that crosses a stage boundary: its schema, its reader and its writer."""
