"""Pure, table-tested decisions: gate rules, artifact selection, sampling scores, quarantine share, approval."""
