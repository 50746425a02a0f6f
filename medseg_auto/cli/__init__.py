"""Command-line front ends: argument parsing, messages and exit codes only."""
